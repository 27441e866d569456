/* harvest.h - what harvest.c sends to the controller and keeps in rings.
 * Included by harvest.c; Python reads these through bcc's compiled tables
 * (the leaf types of `record_layout` and `stats`), never through a
 * hand-written mirror. */
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
#ifndef HARVEST_CPUS
#define HARVEST_CPUS       64       /* possible CPUs: the controller sets it */
#endif
#define STATS_BITS         10
#define STATS_SLOTS        (1u << STATS_BITS)  /* per CPU */
#define STATS_PROBES       4        /* slots tried before counting as full */
#define HIST_BUCKETS       64       /* log2: bucket i holds [2^(i-1), 2^i) */
#define VALUE_ARGS         4        /* args[] copies in the probe's registers */
#define VALUE_ARGS_MAX     16384    /* sites with a chosen argument */

/* A string argument as BPF found it: `length` counts the bytes copied
 * (with the NUL); negative is the error from bpf_probe_read_user_str, so an
 * unreadable string is reported, never shown as garbage. */
struct harvest_string {
    __s32 length;
    char text[HARVEST_STRING_MAX];
};

/* One harvested record: a stream record and a flight ring slot alike.
 * A flight slot is a seqlock of two words: its writer sets `flight_begun`
 * (the last field) first and `flight_done` (the first) last, both to its
 * claim + 1; a reader copies front to back, so a copy with the two equal
 * was not written meanwhile. Stream records leave them undefined. */
struct harvest_record {
    __u64 flight_done;
    __u32 pid;                  /* tgid */
    __u32 status;               /* HARVEST_* below */
    __u64 harvest_ns;           /* bpf_ktime_get_ns() at the probe hit, taken
                                   only when the entry is unreadable (else
                                   0: entry.timestamp is the record's time;
                                   the clock read costs ~30 ns a hit) */
    __u64 probe_address;        /* where the probe fired: with the probe's
                                   link-time address it gives the file's
                                   load base, to read a process that exited */
    char comm[16];              /* the stream's records only: empty in a
                                   flight ring kept without a stream */
    struct recorder_record entry;
    struct harvest_string strings[HARVEST_STRINGS];   /* one per %s
                                   argument, in order; slots past the
                                   entry's string arguments are undefined */
    __u64 flight_begun;
};
_Static_assert(sizeof(struct harvest_record) % 8 == 0,
               "stream records are 8-byte multiples: ring slots have no tail");

#define HARVEST_ENTRY_UNREADABLE 0x1    /* the entry pointer could not be read */

/* Per-CPU counters, indexed by enum harvest_counter. Exact: atomic adds. */
enum harvest_counter {
    COUNTER_HITS = 0,           /* probe hits (records produced) */
    COUNTER_STREAMED = 1,       /* records committed to the stream */
    COUNTER_STREAM_FAILED = 2,  /* stream ring full, or no ring yet */
    COUNTER_FLIGHT = 3,         /* records written to the flight ring */
    COUNTER_STATS_FULL = 4,     /* hits no stats slot could count */
    COUNTER_COUNT = 5,
};

/* Metrics: what one probe site in one process recorded on one CPU.
 * `stats` holds STATS_SLOTS of these per CPU, open-addressed by a hash of
 * the key (address, pid, topic_id); a slot is free while `address` is 0.
 * A C topic is its probe, so its sites are counted with topic_id
 * HARVEST_NO_TOPIC (the controller names the topic from the address); the
 * probe that run-time topics share is counted per entry topic id. The
 * controller sums slots of one key (across CPUs, and twice-claimed ones)
 * and sites of one topic.
 *
 * Every figure comes from the probe's registers (probes/PROBES.md), none
 * from user memory: `value_arg` chooses which args[] copy is the value. */
struct site_stats {
    __u64 address;              /* runtime address of the probe site */
    __u32 pid;
    __u32 topic_id;
    __u64 count;                /* records */
    __u64 valued;               /* records whose value was aggregated */
    __s64 sum;                  /* of the values (signed) */
    __s64 min;
    __s64 max;
    __u64 first_ns;             /* timestamp of the first record here */
    __u64 last_ns;              /* timestamp of the previous record here: the
                                   intervals sum to last_ns - first_ns */
    __u32 arg;                  /* args[] index aggregated (value_args) */
    __u32 spans;                /* span ends seen: values are durations */
    __u64 values[HIST_BUCKETS];     /* log2 histogram of values */
    __u64 intervals[HIST_BUCKETS];  /* log2 histogram of ns between records */
};

/* Key of value_args: which argument to aggregate at a site (default 0). */
struct site_key {
    __u64 address;
    __u32 pid;
    __u32 topic_id;
};
#define HARVEST_NO_TOPIC 0xffffffffu

#endif
