/* coverage.h - what coverage.c sends to the controller.
 * Included by coverage.c; Python reads these through bcc's compiled tables
 * (the leaf types of `layout_*`), never through a hand-written mirror.
 *
 * Messages in the `events` ring buffer, each starting with its kind:
 *   FORK   a followed process forked a process that is followed too
 *   EXEC   a followed process (or one the selection names) exec'd
 *   BEGIN, TOPIC..., ENTRY..., END
 *          a followed process the controller had not armed is ending: what
 *          its rings hold since it was followed, copied in its own context */
#ifndef RECORDER_COVERAGE_H
#define RECORDER_COVERAGE_H

#include <recorder/registry.h>
#include "harvest.h"            /* struct harvest_string */

#define COVERAGE_NAME_MAX   64
#define COVERAGE_PATH_MAX   256
#define COVERAGE_FORMAT_MAX 128     /* bytes kept of an entry's format */
#define COVERAGE_WHERE_MAX  64      /* and of its "file:line" */

enum coverage_kind {
    COVERAGE_FORK  = 1,
    COVERAGE_EXEC  = 2,
    COVERAGE_BEGIN = 3,
    COVERAGE_TOPIC = 4,
    COVERAGE_ENTRY = 5,
    COVERAGE_END   = 6,
};

/* What the controller has done with a followed process. */
enum coverage_state {
    WATCH_PENDING = 0,      /* not armed: copy its records when it ends */
    WATCH_ARMED   = 1,      /* armed and backfilled: the stream has it;
                               copied at its end all the same, for the
                               formats (and topics armed late) */
    WATCH_NO_CORE = 2,      /* no recorder core: nothing to copy */
};

/* watched: tgid -> this. A process is followed while it has an entry. */
struct coverage_watch {
    __u64 registry;         /* address of recorder_registry, 0: not known */
    __u64 since;            /* copy records stamped at or after this (ns) */
    __u32 state;            /* enum coverage_state */
    __u32 parent;           /* the tgid it forked from (0: exec'd, or named) */
};

struct coverage_fork {
    __u32 kind;             /* COVERAGE_FORK */
    __u32 tgid;             /* the child */
    __u32 parent;
    __u32 pad;
    __u64 time_ns;
    __u64 registry;         /* inherited from the parent, 0 if not known */
};

struct coverage_exec {
    __u32 kind;             /* COVERAGE_EXEC */
    __u32 tgid;
    __u64 time_ns;
    __u64 start_code;       /* mm->start_code: the executable's load bias
                               plus its lowest executable address */
    char comm[16];
    char filename[COVERAGE_PATH_MAX];   /* as exec was given it */
};

struct coverage_begin {
    __u32 kind;             /* COVERAGE_BEGIN */
    __u32 tgid;
    __u64 time_ns;          /* when the copy began */
    __u64 since;
    __u64 registry;
    __u64 start_code;
    __u32 parent;
    __u32 pad;
    char comm[16];
};

struct coverage_topic {
    __u32 kind;             /* COVERAGE_TOPIC */
    __u32 tgid;
    __u32 id;
    __u32 pad;
    __u64 name_at;          /* where the name is: a fork's page of it may
                             * not be mapped yet (empty name), the
                             * controller reads it from its files */
    char name[COVERAGE_NAME_MAX];
};

struct coverage_entry {
    __u32 kind;             /* COVERAGE_ENTRY */
    __u32 tgid;
    __u32 shard;            /* the shard's slot (CPU % 64) */
    __u32 status;           /* COVERAGE_ENTRY_* */
    __u64 index;            /* index in the shard (sequence - 1) */
    struct recorder_record entry;
    struct harvest_string strings[HARVEST_STRINGS];
    /* Read while the process lives: a format made at run time (Python's)
     * is in its heap, gone with it. */
    char format[COVERAGE_FORMAT_MAX];
    char where[COVERAGE_WHERE_MAX];
};
#define COVERAGE_ENTRY_PARTIAL 0x1  /* only the words the writer wrote read */

struct coverage_end {
    __u32 kind;             /* COVERAGE_END */
    __u32 tgid;
    __u32 topics;
    __u32 shards;
    __u64 sent;             /* entries sent */
    __u64 lost;             /* entries the ring buffer refused */
    __u64 overwritten;      /* since `since`, rewritten before the copy */
    __u64 time_ns;
};

/* Per-CPU counters, indexed by enum coverage_counter. */
enum coverage_counter {
    COVERAGE_COUNT_FORKS = 0,       /* forks of followed processes */
    COVERAGE_COUNT_EXECS = 1,
    COVERAGE_COUNT_COPIES = 2,      /* exit copies made */
    COVERAGE_COUNT_NO_REGISTRY = 3, /* ending, followed, no core found */
    COVERAGE_COUNT_LOST = 4,        /* entries the ring refused */
    COVERAGE_COUNT_MESSAGES_LOST = 5,
    COVERAGE_COUNT_COUNT = 6,
};

#endif
