/* recorder/registry.h - how a process's rings are laid out in its memory.
 *
 * One exported symbol, `recorder_registry`, reaches every ring: registry ->
 * topics (a list) -> per-CPU shards -> contiguous fixed-size entries. Every
 * hop is a plain pointer and every loop is bounded (RECORDER_MAX_TOPICS,
 * RECORDER_MAX_SHARDS, a shard's capacity), so BPF, a debugger or the
 * controller reading /proc/PID/mem can walk it without the core's help.
 */
#ifndef RECORDER_REGISTRY_H
#define RECORDER_REGISTRY_H

#include "entry.h"

#define RECORDER_REGISTRY_MAGIC  0x3152444352434552ull   /* "RECRCDR1" */
#define RECORDER_MAX_SHARDS      64     /* CPUs beyond this share shards */
#define RECORDER_MAX_TOPICS      4096   /* bound for walkers, not for writers */
#define RECORDER_SHARD_HEADER    64

/* One CPU's part of a topic's ring. Writers on that CPU reserve a slot with
 * one uncontended fetch-add on `head`, so threads on different CPUs never
 * share a written cache line (no global counter, unlike the seed library). */
struct recorder_shard {
    __u64 head;         /* entries ever reserved here; slot = index & mask */
    __u32 mask;         /* capacity - 1; capacity is a power of two */
    __u32 keep;         /* entries a reader shows: the topic's size N */
    __u32 topic_id;
    __u32 cpu;
    __u64 reserved[5];
    struct recorder_record entries[];
};
_Static_assert(sizeof(struct recorder_shard) == RECORDER_SHARD_HEADER,
               "entries start on their own cache line");

/* A C string address that BPF and readers see as 64 bits on every ABI. */
typedef union recorder_text {
    const char *text;
    __u64 address;
} recorder_text;

/* The seed's `recorder_info` (recorder.h): `trace`, `name`, `description`
 * and `next` read as in the seed; names are 64 bits on every ABI. */
struct recorder_topic {
    __s64 trace;        /* seed semantics: <0 off, 0 record, >0 also print */
    __u32 id;           /* index in the registry, stored in each entry */
    __u32 size;         /* entries kept per shard (N of RECORDER(name, N)) */
    union { const char *name; __u64 name_address; };
    union { const char *description; __u64 description_address; };
    __u64 armed;        /* run-time topics only: nonzero while a tracer wants
                           them (they share one probe); C topics use their
                           own USDT semaphore instead */
    struct recorder_topic *next;
    struct recorder_shard *shards[RECORDER_MAX_SHARDS];
};

struct recorder_tweak {
    union { __s64 value; __s64 trace; };    /* `trace` in the seed */
    union { const char *name; __u64 name_address; };
    union { const char *description; __u64 description_address; };
    struct recorder_tweak *next;
};

/* RECORDER_TRACES="topic=name1,name2" names a topic's first arguments as
 * channels (the seed's value export): `recorder scope` plots them by name. */
struct recorder_channels {
    __u32 topic_id;
    __u32 count;            /* names in `names` */
    recorder_text names;    /* "name1,name2", NUL-terminated */
    struct recorder_channels *next;
};

struct recorder_registry {
    __u64 magic;            /* RECORDER_REGISTRY_MAGIC once initialized */
    __u32 version;          /* RECORDER_ENTRY_VERSION */
    __u32 entry_size;       /* RECORDER_ENTRY_SIZE */
    struct recorder_topic *topics;  /* newest first */
    __u32 topic_count;
    __u32 shard_count;      /* RECORDER_MAX_SHARDS */
    struct recorder_tweak *tweaks;
    struct recorder_channels *channels;     /* newest first */
};

#endif /* RECORDER_REGISTRY_H */
