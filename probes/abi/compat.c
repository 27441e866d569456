/* compat.c - entry points librecorder.so keeps for programs linked against
 * an earlier ABI (see librecorder.map). Linked into the shared library only:
 * a static link has no old programs to serve. The name compat_* stays
 * local (the map exports recorder_*); only its versioned alias is seen. */
#include "recorder.h"

/* RECORD of the header before RECORDER_2 called recorder_trace_entry with
 * the record it had just made: that is recorder_trace_record now. */
void compat_trace_entry_1(struct recorder_topic *topic,
                          struct recorder_record *entry);
void compat_trace_entry_1(struct recorder_topic *topic,
                          struct recorder_record *entry)
{
    recorder_trace_record(topic, entry);
}
__asm__(".symver compat_trace_entry_1, recorder_trace_entry@RECORDER_1");
