/* snapshot.h - what snapshot.c sends to the controller at a fatal signal.
 * Included by snapshot.c; Python reads these through bcc's compiled tables
 * (the leaf types of `layout_fault`, `layout_entry`, `layout_end`), never
 * through a hand-written mirror.
 *
 * One capture is a sequence of messages in the `snapshots` ring buffer, all
 * of one tgid: a FAULT, then one ENTRY per copied entry, then an END. */
#ifndef RECORDER_SNAPSHOT_H
#define RECORDER_SNAPSHOT_H

#include <recorder/registry.h>

#ifndef SNAPSHOT_RECORDS
#define SNAPSHOT_RECORDS   256      /* N: entries copied per shard at most */
#endif
#define SNAPSHOT_TOPICS    RECORDER_MAX_TOPICS   /* walk bound */

enum snapshot_kind {
    SNAPSHOT_FAULT = 1,
    SNAPSHOT_ENTRY = 2,
    SNAPSHOT_END   = 3,
};

/* How the process is dying. */
#define SNAPSHOT_GROUP_EXIT 0x1     /* delivered as SIGKILL to a group marked
                                       for death: `signal` is the one that
                                       killed it (group_exit_code) */

struct snapshot_fault {
    __u32 kind;                 /* SNAPSHOT_FAULT */
    __u32 tgid;
    __u32 tid;                  /* the thread the signal was delivered to */
    __s32 signal;
    __s32 code;                 /* si_code; 0 without siginfo */
    __u32 flags;                /* SNAPSHOT_GROUP_EXIT */
    __u64 address;              /* si_addr for fault signals, else 0 */
    __u64 time_ns;              /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u64 registry;             /* where the registry was walked */
    char comm[16];
};

/* One in-process entry as it was at fault time. */
struct snapshot_entry {
    __u32 kind;                 /* SNAPSHOT_ENTRY */
    __u32 tgid;
    __u32 shard_cpu;            /* the shard's CPU (index in topic->shards) */
    __u32 status;               /* SNAPSHOT_ENTRY_* */
    __u64 index;                /* index in the shard (sequence - 1) */
    struct recorder_record entry;
};
#define SNAPSHOT_ENTRY_UNREADABLE  0x1  /* the read failed (zeroes) */
#define SNAPSHOT_ENTRY_TORN        0x2  /* being rewritten: seqlock mismatch */

struct snapshot_end {
    __u32 kind;                 /* SNAPSHOT_END */
    __u32 tgid;
    __u32 topics;               /* topics walked */
    __u32 shards;               /* shards walked */
    __u64 sent;                 /* entries sent */
    __u64 lost;                 /* entries the ring buffer refused */
    __u64 time_ns;              /* when the copy ended */
};

/* Per-CPU counters, indexed by enum snapshot_counter. */
enum snapshot_counter {
    SNAPSHOT_COUNT_FATAL = 0,       /* fatal deliveries seen, deduped */
    SNAPSHOT_COUNT_UNKNOWN = 1,     /* fatal, but no registry known */
    SNAPSHOT_COUNT_CAPTURED = 2,    /* captures started */
    SNAPSHOT_COUNT_LOST = 3,        /* entries the ring refused */
    SNAPSHOT_COUNT_MESSAGES_LOST = 4, /* FAULT/END messages refused */
    SNAPSHOT_COUNT_COUNT = 5,
};

#endif
