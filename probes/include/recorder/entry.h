/* recorder/entry.h - the probe contract: one entry layout for every reader.
 *
 * The in-process rings, the kernel rings (every BPF program under
 * tracer/recorder_tracer/kernel/bpf includes it),
 * snapshot files and the shared-memory export all hold this exact layout, so
 * a record is copied, never re-marshalled. probes/PROBES.md documents each
 * field; tests/test_contract.py checks that document against this header.
 *
 * Only fixed-width types: this header is compiled by gcc for the core and by
 * clang for BPF.
 */
#ifndef RECORDER_ENTRY_H
#define RECORDER_ENTRY_H

#include <linux/types.h>

#define RECORDER_MAX_ARGS       12
#define RECORDER_ENTRY_VERSION  1

/* Argument kinds, two bits per argument in recorder_record.arg_types. They are
 * computed at compile time from the C type of each argument (_Generic), so a
 * reader knows which 64-bit slots are strings to fetch and which are doubles
 * without parsing the format. */
enum recorder_arg_kind {
    RECORDER_ARG_INT    = 0,    /* any integer, sign-extended to 64 bits */
    RECORDER_ARG_DOUBLE = 1,    /* float or double, bit-cast into the slot */
    RECORDER_ARG_STRING = 2,    /* char * / const char *: address of a string */
    RECORDER_ARG_POINTER = 3,   /* any other pointer */
};
#define RECORDER_ARG_KIND(types, i)  (((types) >> (2 * (i))) & 3u)

struct recorder_record {
    __u64 timestamp;    /* ns, CLOCK_MONOTONIC: the clock of bpf_ktime_get_ns */
    __u64 sequence;     /* 1 + index of this entry in its shard; written last
                           (release), so a reader that sees the index it expects
                           before and after copying holds a whole entry */
    __u32 tid;          /* kernel thread id of the writer */
    __u32 topic_id;     /* index of the topic in the process's registry */
    __u32 arg_types;    /* RECORDER_ARG_KIND per argument */
    __u16 cpu;          /* CPU the writer ran on (selects the shard) */
    __u8  nargs;        /* arguments used, 0..RECORDER_MAX_ARGS */
    __u8  flags;        /* RECORDER_ENTRY_* */
    __u64 format;       /* address of the printf-style format in the writer */
    __u64 where;        /* address of "file:line" in the writer */
    __u64 args[RECORDER_MAX_ARGS];
};

/* The timestamp was copied from the previous entry (RECORD_FAST). */
#define RECORDER_ENTRY_FAST_TIMESTAMP 0x1
/* A span (Python's `recorder.span`, `@recorder.traced`) began: no arguments
   are implied. */
#define RECORDER_ENTRY_SPAN_BEGIN     0x2
/* A span ended: args[0] is its duration in ns (unsigned), so the tracer can
   aggregate latencies without parsing formats. */
#define RECORDER_ENTRY_SPAN_END       0x4

#define RECORDER_ENTRY_SIZE 144
_Static_assert(sizeof(struct recorder_record) == RECORDER_ENTRY_SIZE,
               "recorder_record size is part of the probe ABI");
_Static_assert(__builtin_offsetof(struct recorder_record, sequence) == 8,
               "sequence offset is part of the probe ABI");
_Static_assert(__builtin_offsetof(struct recorder_record, format) == 32,
               "format offset is part of the probe ABI");
_Static_assert(__builtin_offsetof(struct recorder_record, args) == 48,
               "args offset is part of the probe ABI");

#endif /* RECORDER_ENTRY_H */
