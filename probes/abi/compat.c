/* compat.c - entry points librecorder.so keeps for programs linked against
 * an earlier ABI (see librecorder.map). Linked into the shared library only:
 * a static link has no old programs to serve. The name compat_* stays
 * local (the map exports recorder_*); only its versioned alias is seen. */
#include "recorder.h"

/* The symver attribute survives -flto, which drops a top-level .symver
 * asm (the library then had no RECORDER_1 entry, and old programs bound to
 * the new signature); the asm serves compilers without the attribute. */
#if defined(__has_attribute)
#if __has_attribute(symver)
#define COMPAT_SYMVER_ATTRIBUTE 1
#endif
#endif

/* RECORD of the header before RECORDER_2 called recorder_trace_entry with
 * the record it had just made: that is recorder_trace_record now. */
void compat_trace_entry_1(struct recorder_topic *topic,
                          struct recorder_record *entry);
#ifdef COMPAT_SYMVER_ATTRIBUTE
__attribute__((symver("recorder_trace_entry@RECORDER_1")))
#endif
void compat_trace_entry_1(struct recorder_topic *topic,
                          struct recorder_record *entry)
{
    recorder_trace_record(topic, entry);
}
#ifndef COMPAT_SYMVER_ATTRIBUTE
__asm__(".symver compat_trace_entry_1, recorder_trace_entry@RECORDER_1");
#endif
