/* harvest.h - what harvest.c sends to the controller and keeps in rings.
 * Included by harvest.c; Python reads these through bcc's compiled table
 * (b["stream"].event(data)), never through a hand-written mirror. */
#ifndef RECORDER_HARVEST_H
#define RECORDER_HARVEST_H

#include <recorder/entry.h>

#ifndef HARVEST_STRING_MAX
#define HARVEST_STRING_MAX 64       /* bytes kept of each %s argument */
#endif
#define HARVEST_STRINGS    4        /* %s arguments fetched per record */
#ifndef FLIGHT_ENTRIES
#define FLIGHT_ENTRIES     1024     /* per CPU, the kernel flight ring */
#endif

/* A string argument as BPF found it: `length` counts the bytes copied
 * (with the NUL); negative is the error from bpf_probe_read_user_str, so an
 * unreadable string is reported, never shown as garbage. */
struct harvest_string {
    __s32 length;
    char text[HARVEST_STRING_MAX];
};

struct harvest_record {
    __u32 pid;                  /* tgid */
    __u32 status;               /* HARVEST_* below */
    __u64 harvest_ns;           /* bpf_ktime_get_ns() at the probe hit */
    __u64 probe_address;        /* where the probe fired: with the probe's
                                   link-time address it gives the file's
                                   load base, to read a process that exited */
    char comm[16];
    struct recorder_entry entry;
    struct harvest_string strings[HARVEST_STRINGS];
};

#define HARVEST_ENTRY_UNREADABLE 0x1    /* the entry pointer could not be read */

/* Per-CPU counters, indexed by enum harvest_counter. */
enum harvest_counter {
    COUNTER_HITS = 0,           /* probe hits (records produced) */
    COUNTER_STREAMED = 1,       /* records handed to the stream */
    COUNTER_STREAM_FAILED = 2,  /* perf output refused (buffer full) */
    COUNTER_FLIGHT = 3,         /* records written to the flight ring */
    COUNTER_COUNT = 4,
};

/* Per (pid, topic) aggregate for metrics. */
struct topic_key {
    __u32 pid;
    __u32 topic_id;
};
struct topic_stats {
    __u64 count;
    __u64 last_ns;
};

#endif
