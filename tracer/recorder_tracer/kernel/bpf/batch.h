/* batch.h - what batch.c sends to the controller and keeps per process.
 * Included by batch.c; Python reads these through bcc's compiled tables
 * (the leaf types of `layout_chunk`, `layout_string`, `cursors`, `targets`),
 * never through a hand-written mirror.
 *
 * The stream is a sequence of messages in one BPF ring buffer per CPU: a
 * CHUNK carries up to BATCH_CHUNK consecutive entries of one shard, copied
 * with one read; a STRING carries the text of one %s argument of an entry
 * of the chunk before it (same CPU ring, so it always follows its chunk). */
#ifndef RECORDER_BATCH_H
#define RECORDER_BATCH_H

#include <recorder/registry.h>

#define BATCH_CHUNK        16       /* entries per chunk message */
#ifndef BATCH_TOPICS
#define BATCH_TOPICS       32       /* armed topics per process */
#endif
#ifndef BATCH_STRING_MAX
#define BATCH_STRING_MAX   64       /* bytes kept of each %s argument */
#endif
#define BATCH_STRINGS      4        /* %s arguments fetched per entry */
#ifndef BATCH_CPUS
#define BATCH_CPUS         64       /* shard slots to harvest: possible CPUs */
#endif

enum batch_kind {
    BATCH_MSG_CHUNK = 1,
    BATCH_MSG_STRING = 2,
    BATCH_MSG_TOPIC = 3,
    BATCH_MSG_UNNAMED = 4,      /* struct batch_topic: a name BPF could not read */
};

struct batch_chunk {
    __u32 kind;                 /* BATCH_MSG_CHUNK */
    __u32 pid;                  /* tgid */
    __u32 topic_id;
    __u16 count;                /* entries copied, 1..BATCH_CHUNK */
    __u16 skip;                 /* entries[0..skip) were overwritten while
                                   copied: not records (counted lost) */
    __u32 shard;                /* the shard slot (CPU % 64) */
    __u32 reserved;
    __u64 first;                /* index in its shard of entries[0] */
    char comm[16];              /* of the thread the batch ran in */
    struct recorder_record entries[BATCH_CHUNK];
};

/* The text of a %s argument of an entry sent in a chunk before it. */
struct batch_string {
    __u32 kind;                 /* BATCH_MSG_STRING */
    __u32 pid;
    __u32 topic_id;
    __u32 shard;
    __u64 index;                /* the entry's index in its shard */
    __u32 arg;                  /* which argument */
    __s32 length;               /* bytes copied with the NUL; < 0: unreadable */
    char text[BATCH_STRING_MAX];
};

#define BATCH_NAME_MAX     64       /* bytes of a topic name compared */

/* A topic BPF armed by itself (registered after the process was armed):
 * its name, for a process that may be gone before the controller reads it. */
struct batch_topic {
    __u32 kind;                 /* BATCH_MSG_TOPIC */
    __u32 pid;
    __u32 topic_id;
    __u32 size;                 /* entries kept per shard */
    __u64 address;              /* struct recorder_topic in the process;
                                   BATCH_MSG_UNNAMED: where its name is */
    char name[BATCH_NAME_MAX];
};

/* targets: tgid -> what to harvest there. Written by the controller when
 * it arms the process; afterwards only BPF adds topics (discovery). */
struct batch_target {
    __u64 registry;             /* address of recorder_registry */
    __u32 base;                 /* topics registered when armed: later ones
                                   (id >= base) are found by BPF, by name */
    __u32 known;                /* topic_count when BPF last looked */
    __u32 generation;           /* `generation` when BPF last looked */
    __u32 topics;               /* ids used */
    __u64 lock;                 /* a discovery runs */
    __u64 retry_ns;             /* a name was unreadable: look again then */
    __u32 unread;               /* looks in a row that found one */
    __u32 unread_now;           /* the current look found one */
    __u32 ids[BATCH_TOPICS];    /* armed topic ids: cursors keys */
    __u32 armed_now;            /* the current look armed a topic */
    __u32 scan;                 /* the next slot to look at for adoption */
    /* A look over more topics than one harvest covers goes on at the next
     * harvest from `resume` (0: from the list's head); when it reaches the
     * end, `known` and `generation` take what they were at its start. */
    __u64 resume;
    __u32 look_known;
    __u32 look_generation;
    __u32 capped;               /* a topic the spec arms was refused (counted
                                   once a process: BATCH_COUNT_CAPPED) */
    __u32 turn;                 /* index in ids where the next non-final walk
                                   starts: after the topic the last one ran
                                   out in (racy: any start will do) */
    /* Per shard slot: 0, or (the time a harvest left entries in it) | 1.
     * A slot marked so, its own CPU not back for BATCH_LEFT_NS, is adopted
     * by a harvest on another CPU (batch.c). The controller marks every
     * slot at arm time (1: time 0, adopt at once), discovery when it arms
     * a topic ((topics << 1) | 1: time ~0 too, and never the same twice). */
    __u64 left[BATCH_CPUS];
};

/* armed_names: topic names the spec arms, as the controller found them
 * anywhere; a topic registered after a process was armed is harvested
 * from its first record when its name is here. */
struct batch_name {
    char name[BATCH_NAME_MAX];
};

struct cursor_key {
    __u32 tgid;
    __u32 topic_id;
};

/* cursors: (tgid, topic id) -> per shard, the next index to harvest, and
 * what became of every index passed: streamed + overwritten + refused is
 * all the topic produced there since it was armed. */
struct batch_cursor {
    __u64 topic;                /* address of struct recorder_topic */
    __u64 next[BATCH_CPUS];     /* per shard slot */
    __u64 busy[BATCH_CPUS];     /* per shard slot: a harvest holds it (64
                                   bits: BPF's atomics on 32 need alu32) */
    __u64 streamed;             /* entries sent to the stream */
    __u64 overwritten;          /* rewritten in the process's ring first */
    __u64 refused;              /* stream full at a final harvest */
};

/* Per-CPU counters, indexed by enum batch_counter. */
enum batch_counter {
    BATCH_COUNT_STREAMED = 0,       /* entries sent (as stream.py's STREAMED) */
    BATCH_COUNT_LOST = 1,           /* overwritten + refused */
    BATCH_COUNT_HARVESTS = 2,       /* harvests run */
    BATCH_COUNT_CHUNKS = 3,
    BATCH_COUNT_STRINGS_LOST = 4,   /* string messages refused */
    BATCH_COUNT_BUSY = 5,           /* shards skipped: another CPU had them */
    BATCH_COUNT_FULL = 6,           /* harvests stopped by a full stream */
    BATCH_COUNT_UNNAMED = 7,        /* topics given up: name never readable */
    BATCH_COUNT_UNFINISHED = 8,     /* final walks that ended before every shard */
    BATCH_COUNT_ADOPTED = 9,        /* shards left behind taken by another CPU */
    BATCH_COUNT_CAPPED = 10,        /* processes with an armed topic refused:
                                       BATCH_TOPICS were armed already */
    BATCH_COUNT_COUNT = 11,
};

#endif
