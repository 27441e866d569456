/* coverage.c - follow a selection through fork and exec, and copy the
 * records of a process that ends before the controller could arm it.
 *
 * Per-PID uprobes do not follow fork, and a process that lives a
 * millisecond ends before the controller hears of it. Its records are in
 * its in-process rings all the same (probes/PROBES.md). This program:
 *
 *   sched_process_fork  in the parent's context: a child of a followed
 *                       process (or one the selection names: --all, a
 *                       comm, a cgroup) is followed from now on; it has its
 *                       parent's memory, so its registry is the parent's.
 *                       FORK tells the controller, which arms the child and
 *                       backfills what it recorded meanwhile (also when the
 *                       registry is not known yet, if the parent itself was
 *                       followed: a core loaded late, by a Python import).
 *   sched_process_exec  a followed process (or one the selection names)
 *                       runs a new program: followed from now on, its
 *                       registry not known yet. EXEC tells the controller.
 *   sched_process_exit  (6.16+, before exit_mm(): COVERAGE_EXIT_TRACEPOINT)
 *   or sys_enter        exit_group (older kernels; a fatal signal is the
 *                       snapshot program's)
 *                       in the ending process's own context: walk its
 *                       registry (found by its magic in the executable's
 *                       data when not known) and copy every entry stamped
 *                       since it was followed, with its format and
 *                       location: BEGIN, TOPIC..., ENTRY..., END. The
 *                       controller drops what the stream brought already.
 *
 * Maps, and who reads them:
 *   watched     tgid -> struct coverage_watch      the controller follows
 *               named processes, marks armed ones; forks add, exits drop
 *   comms       comm -> 1: --comm names            the controller
 *   cgroups     cgroup array: --cgroup             the controller
 *   config      [0]: struct coverage_config        the controller
 *   events      ring buffer of FORK and EXEC       the controller
 *   copies      ring buffer of BEGIN ... END       the controller
 *   counters    per-CPU COVERAGE_COUNT_*           the controller
 *   walks, walk_programs: a walk's state across tail calls
 *   layout_*    never written: carry the message layouts to Python
 *
 * Compile-time switches (-D): COVERAGE_RING_PAGES, COVERAGE_CPUS (shard
 * slots to visit), COVERAGE_CGROUPS, COVERAGE_EXIT_TRACEPOINT, and the
 * kernel offsets TASK_PID_OFFSET, TASK_TGID_OFFSET, TASK_MM_OFFSET,
 * MM_START_CODE_OFFSET, MM_START_DATA_OFFSET, MM_END_DATA_OFFSET,
 * BINPRM_FILENAME_OFFSET.
 */
#include "coverage.h"

#define AT(base, offset, type) ((type *)((char *)(base) + (offset)))

#ifndef COVERAGE_RING_PAGES
#define COVERAGE_RING_PAGES 2048
#endif
#ifndef COVERAGE_CPUS
#define COVERAGE_CPUS RECORDER_MAX_SHARDS
#endif
#ifndef COVERAGE_CGROUPS
#define COVERAGE_CGROUPS 8
#endif
#define COVERAGE_STEPS 256      /* walk steps per program run */
#define COVERAGE_CALLS 31       /* tail calls (the kernel allows 33) */
#define SCAN_CHUNK     256      /* bytes of data read per scan step */
#define SCAN_CHUNKS    32       /* scan steps per program run */
#define SYS_EXIT_GROUP 231      /* x86-64 */

struct coverage_config {
    __u32 all;          /* --all: every process */
    __u32 children;     /* follow the children of followed processes */
    __u32 cgroups;      /* cgroups set in `cgroups` */
    __u32 comms;        /* names set in `comms` */
    __u32 copies;       /* copy at the end (0: metrics only, just forget) */
    __u32 pad;
};
struct comm_key {
    char comm[16];
};

BPF_HASH(watched, __u32, struct coverage_watch, 65536);
BPF_HASH(comms, struct comm_key, __u8, 256);
BPF_CGROUP_ARRAY(cgroups, COVERAGE_CGROUPS);
BPF_ARRAY(config, struct coverage_config, 1);
BPF_RINGBUF_OUTPUT(events, 64);     /* FORK, EXEC: never behind copies */
BPF_RINGBUF_OUTPUT(copies, COVERAGE_RING_PAGES);
BPF_PERCPU_ARRAY(counters, __u64, COVERAGE_COUNT_COUNT);
BPF_ARRAY(layout_fork, struct coverage_fork, 1);
BPF_ARRAY(layout_exec, struct coverage_exec, 1);
BPF_ARRAY(layout_begin, struct coverage_begin, 1);
BPF_ARRAY(layout_topic, struct coverage_topic, 1);
BPF_ARRAY(layout_entry, struct coverage_entry, 1);
BPF_ARRAY(layout_end, struct coverage_end, 1);

/* The walk's state, per CPU across tail calls (as in snapshot.c). */
struct walk {
    __u64 topic;        /* address of the topic being walked, 0 at the end */
    __u64 shard;        /* address of the shard being copied */
    __u64 next;         /* index of the next entry to look at */
    __u64 remaining;    /* entries left to look at in this shard */
    __u64 since;
    __u64 sent;
    __u64 lost;
    __u64 overwritten;
    __u64 start_code;
    __u64 scan_at;      /* the registry scan: next address */
    __u64 scan_end;
    __u32 parent;
    __u32 mask;
    __u32 slot;         /* next shard slot of the topic to open */
    __u32 tgid;
    __u32 topics;
    __u32 shards;
    __u32 calls;
};
BPF_PERCPU_ARRAY(walks, struct walk, 1);
BPF_PROG_ARRAY(walk_programs, 2);   /* [0]: walk_more, [1]: scan_more */

static __always_inline void count(__u32 counter, __u64 amount)
{
    __u64 *value = counters.lookup(&counter);
    if (value)
        __sync_fetch_and_add(value, amount);
}

/* Does the selection name the current process (by itself, not through a
 * parent)? --all, its comm, or its cgroup. */
static __always_inline int named(struct coverage_config *conf)
{
    if (conf->all)
        return 1;
    if (conf->comms) {
        struct comm_key key = {};
        bpf_get_current_comm(key.comm, sizeof(key.comm));
        if (comms.lookup(&key))
            return 1;
    }
#pragma unroll
    for (int i = 0; i < COVERAGE_CGROUPS; i++) {
        if (i >= conf->cgroups)
            break;
        if (cgroups.check_current_task(i) == 1)
            return 1;
    }
    return 0;
}

/* -- the walk ------------------------------------------------------------- */

static __always_inline void fetch_strings(struct coverage_entry *out)
{
    __u32 found = 0;
#pragma unroll
    for (int i = 0; i < RECORDER_MAX_ARGS; i++) {
        if (i >= out->entry.nargs || found >= HARVEST_STRINGS)
            break;
        if (RECORDER_ARG_KIND(out->entry.arg_types, i) != RECORDER_ARG_STRING)
            continue;
        struct harvest_string *string = &out->strings[found & (HARVEST_STRINGS - 1)];
        string->length = bpf_probe_read_user_str(string->text, sizeof(string->text),
                                                 (void *)out->entry.args[i]);
        found++;
    }
}

/* Looks at the entry `walk->next`: sent if whole and stamped since. */
static __always_inline void copy_entry(struct walk *walk)
{
    __u64 index = walk->next;
    __u64 address = walk->shard + RECORDER_SHARD_HEADER
                    + (index & walk->mask) * sizeof(struct recorder_record);
    walk->next++;
    walk->remaining--;
    struct { __u64 timestamp; __u64 sequence; } head = {};
    if (bpf_probe_read_user(&head, sizeof(head), (void *)address)
        || head.sequence != index + 1 || head.timestamp < walk->since)
        return;
    struct coverage_entry *out = copies.ringbuf_reserve(sizeof(*out));
    if (!out) {
        walk->lost++;
        return;
    }
    out->kind = COVERAGE_ENTRY;
    out->tgid = walk->tgid;
    out->shard = walk->slot - 1;
    out->status = 0;
    out->index = index;
    if (bpf_probe_read_user(&out->entry, sizeof(out->entry), (void *)address)) {
        /* The unused tail may lie on a page never touched (harvest.c):
         * read the header and the arguments the writer wrote. */
        __builtin_memset(&out->entry, 0, sizeof(out->entry));
        bpf_probe_read_user(&out->entry, offsetof(struct recorder_record, args),
                            (void *)address);
        __u32 size = out->entry.nargs * sizeof(__u64);
        if (size > sizeof(out->entry.args))
            size = sizeof(out->entry.args);
        bpf_probe_read_user(out->entry.args, size,
                            (void *)(address + offsetof(struct recorder_record, args)));
        out->status = COVERAGE_ENTRY_PARTIAL;
    }
    /* The seqlock check: another thread may be rewriting the slot. */
    __u64 after = 0;
    bpf_probe_read_user(&after, sizeof(after),
                        (void *)(address + offsetof(struct recorder_record, sequence)));
    if (out->entry.sequence != index + 1 || after != index + 1) {
        bpf_ringbuf_discard(out, BPF_RB_NO_WAKEUP);
        return;
    }
    fetch_strings(out);
    if (bpf_probe_read_user_str(out->format, sizeof(out->format),
                                (void *)out->entry.format) < 0)
        out->format[0] = 0;
    if (bpf_probe_read_user_str(out->where, sizeof(out->where),
                                (void *)out->entry.where) < 0)
        out->where[0] = 0;
    bpf_ringbuf_submit(out, BPF_RB_NO_WAKEUP);
    walk->sent++;
}

static __always_inline void open_shard(struct walk *walk)
{
    __u32 slot = walk->slot++;
    __u64 shard = 0;
    if (bpf_probe_read_user(&shard, sizeof(shard),
                            (void *)(walk->topic
                                     + offsetof(struct recorder_topic, shards)
                                     + slot * sizeof(__u64))) || !shard)
        return;
    struct { __u64 head; __u32 mask; __u32 keep; } header = {};
    if (bpf_probe_read_user(&header, sizeof(header), (void *)shard))
        return;
    __u64 capacity = (__u64)header.mask + 1;
    __u64 count = header.head < capacity ? header.head : capacity;
    walk->shard = shard;
    walk->mask = header.mask;
    walk->next = header.head - count;
    walk->remaining = count;
    walk->shards++;
    if (header.head > capacity) {
        /* Wrapped: if the oldest entry left is stamped since, records
         * before it may have been too (at most this many). */
        __u64 oldest = 0;
        bpf_probe_read_user(&oldest, sizeof(oldest),
                            (void *)(shard + RECORDER_SHARD_HEADER
                                     + (walk->next & header.mask)
                                       * sizeof(struct recorder_record)));
        if (oldest >= walk->since)
            walk->overwritten += header.head - capacity;
    }
}

static __always_inline void send_topic(struct walk *walk)
{
    struct coverage_topic *out = copies.ringbuf_reserve(sizeof(*out));
    if (!out) {
        count(COVERAGE_COUNT_MESSAGES_LOST, 1);
        return;
    }
    out->kind = COVERAGE_TOPIC;
    out->tgid = walk->tgid;
    out->pad = 0;
    out->id = ~0u;
    bpf_probe_read_user(&out->id, sizeof(out->id),
                        (void *)(walk->topic + offsetof(struct recorder_topic, id)));
    __u64 name = 0;
    bpf_probe_read_user(&name, sizeof(name),
                        (void *)(walk->topic + offsetof(struct recorder_topic, name)));
    out->name_at = name;
    if (bpf_probe_read_user_str(out->name, sizeof(out->name), (void *)name) < 0)
        out->name[0] = 0;
    bpf_ringbuf_submit(out, BPF_RB_NO_WAKEUP);
}

/* Up to COVERAGE_STEPS steps; 1 when the walk is over. */
static __always_inline int walk_steps(struct walk *walk)
{
    for (int step = 0; step < COVERAGE_STEPS; step++) {
        if (walk->remaining) {
            copy_entry(walk);
            continue;
        }
        if (!walk->topic)
            return 1;
        if (walk->slot == 0)
            send_topic(walk);
        if (walk->slot < COVERAGE_CPUS) {
            open_shard(walk);
            continue;
        }
        __u64 next = 0;
        if (bpf_probe_read_user(&next, sizeof(next),
                                (void *)(walk->topic
                                         + offsetof(struct recorder_topic, next))))
            next = 0;
        walk->topic = next;
        walk->slot = 0;
        if (next && ++walk->topics > RECORDER_MAX_TOPICS)
            return 1;
    }
    return 0;
}

static __always_inline void walk_end(struct walk *walk)
{
    if (walk->lost)
        count(COVERAGE_COUNT_LOST, walk->lost);
    struct coverage_end *end = copies.ringbuf_reserve(sizeof(*end));
    if (!end) {
        count(COVERAGE_COUNT_MESSAGES_LOST, 1);
        return;
    }
    end->kind = COVERAGE_END;
    end->tgid = walk->tgid;
    end->topics = walk->topics;
    end->shards = walk->shards;
    end->sent = walk->sent;
    end->lost = walk->lost;
    end->overwritten = walk->overwritten;
    end->time_ns = bpf_ktime_get_ns();
    bpf_ringbuf_submit(end, BPF_RB_FORCE_WAKEUP);
}

static __always_inline int walk_on(void *ctx, struct walk *walk)
{
    if (!walk_steps(walk) && walk->calls < COVERAGE_CALLS) {
        walk->calls++;
        walk_programs.call(ctx, 0);
        /* only reached if the tail call failed */
    }
    walk_end(walk);
    return 0;
}

int walk_more(struct bpf_raw_tracepoint_args *ctx)
{
    __u32 zero = 0;
    struct walk *walk = walks.lookup(&zero);
    return walk ? walk_on(ctx, walk) : 0;
}

/* Starts the walk of `registry`: BEGIN, then the walk itself in walk_more,
 * by a tail call. Not inlined here: the walk is the costly part to verify
 * (~0.2-0.5 s a program on the 2-vCPU machine), and only walk_more holds
 * it, not also the exit program and scan_more (the controller's start-up,
 * bench/startup_bench.py). */
static __always_inline int begin_walk(void *ctx, struct walk *walk, __u64 registry)
{
    count(COVERAGE_COUNT_COPIES, 1);
    struct coverage_begin *begin = copies.ringbuf_reserve(sizeof(*begin));
    if (!begin) {
        count(COVERAGE_COUNT_MESSAGES_LOST, 1);
        return 0;
    }
    begin->kind = COVERAGE_BEGIN;
    begin->tgid = walk->tgid;
    begin->time_ns = bpf_ktime_get_ns();
    begin->since = walk->since;
    begin->registry = registry;
    begin->start_code = walk->start_code;
    begin->parent = walk->parent;
    begin->pad = 0;
    bpf_get_current_comm(begin->comm, sizeof(begin->comm));
    bpf_ringbuf_submit(begin, BPF_RB_NO_WAKEUP);
    if (bpf_probe_read_user(&walk->topic, sizeof(walk->topic),
                            (void *)(registry
                                     + offsetof(struct recorder_registry, topics))))
        walk->topic = 0;
    if (walk->topic)
        walk->topics = 1;
    if (walk->calls < COVERAGE_CALLS) {
        walk->calls++;
        walk_programs.call(ctx, 0);     /* walk_more */
    }
    walk_end(walk);     /* only reached if the tail call failed */
    return 0;
}

/* The registry of a process the controller never saw: the core keeps it
 * in the executable's initialized data, magic first (core.c). Scanned
 * SCAN_CHUNKS chunks per program run, on in tail calls; the walk follows. */
int scan_more(struct bpf_raw_tracepoint_args *ctx)
{
    __u32 zero = 0;
    struct walk *walk = walks.lookup(&zero);
    if (!walk)
        return 0;
    __u64 chunk[SCAN_CHUNK / 8];
    for (int i = 0; i < SCAN_CHUNKS; i++) {
        __u64 at = walk->scan_at;
        if (at >= walk->scan_end
            || bpf_probe_read_user(chunk, sizeof(chunk), (void *)at)) {
            count(COVERAGE_COUNT_NO_REGISTRY, 1);
            return 0;
        }
        walk->scan_at = at + SCAN_CHUNK - 8;    /* overlap: magic, version */
        for (int w = 0; w < SCAN_CHUNK / 8 - 1; w++) {
            if (chunk[w] != RECORDER_REGISTRY_MAGIC)
                continue;
            /* version 1 and entry size 144, in one word */
            if (chunk[w + 1] == (((__u64)RECORDER_ENTRY_SIZE << 32)
                                 | RECORDER_ENTRY_VERSION))
                return begin_walk(ctx, walk, at + w * 8);
        }
    }
    if (walk->calls < COVERAGE_CALLS) {
        walk->calls++;
        walk_programs.call(ctx, 1);
    }
    count(COVERAGE_COUNT_NO_REGISTRY, 1);
    return 0;
}

/* The process is ending in its own context: copy what it recorded since
 * it was followed, unless the controller armed it. */
static __always_inline int process_ending(void *ctx)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct coverage_watch *watch = watched.lookup(&tgid);
    if (!watch)
        return 0;
    struct coverage_watch copy = *watch;
    watched.delete(&tgid);
    __u32 zero = 0;
    struct coverage_config *conf = config.lookup(&zero);
    if (copy.state == WATCH_NO_CORE || !conf || !conf->copies)
        return 0;
    struct walk *walk = walks.lookup(&zero);
    if (!walk)
        return 0;
    __builtin_memset(walk, 0, sizeof(*walk));
    walk->tgid = tgid;
    walk->since = copy.since;
    walk->parent = copy.parent;
    void *task = (void *)bpf_get_current_task();
    void *mm = 0;
    bpf_probe_read_kernel(&mm, sizeof(mm), AT(task, TASK_MM_OFFSET, void *));
    if (mm) {
        bpf_probe_read_kernel(&walk->start_code, sizeof(walk->start_code),
                              AT(mm, MM_START_CODE_OFFSET, __u64));
        bpf_probe_read_kernel(&walk->scan_at, sizeof(walk->scan_at),
                              AT(mm, MM_START_DATA_OFFSET, __u64));
        bpf_probe_read_kernel(&walk->scan_end, sizeof(walk->scan_end),
                              AT(mm, MM_END_DATA_OFFSET, __u64));
        walk->scan_at &= ~7ull;
    }
    if (copy.registry)
        return begin_walk(ctx, walk, copy.registry);
    walk_programs.call(ctx, 1);     /* scan_more */
    count(COVERAGE_COUNT_NO_REGISTRY, 1);
    return 0;
}

#ifdef COVERAGE_EXIT_TRACEPOINT
/* sched_process_exit(task, group_dead): before exit_mm() since 6.16. */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    if (!ctx->args[1])
        return 0;           /* not the group's last thread */
    return process_ending(ctx);
}
#else
RAW_TRACEPOINT_PROBE(sys_enter)
{
    if (ctx->args[1] != SYS_EXIT_GROUP)
        return 0;
    return process_ending(ctx);
}
#endif

/* -- following ------------------------------------------------------------ */

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    void *child = (void *)ctx->args[1];     /* struct task_struct */
    __u32 parent = bpf_get_current_pid_tgid() >> 32;
    __u32 child_pid = 0, child_tgid = 0;
    bpf_probe_read_kernel(&child_pid, sizeof(child_pid),
                          AT(child, TASK_PID_OFFSET, __u32));
    bpf_probe_read_kernel(&child_tgid, sizeof(child_tgid),
                          AT(child, TASK_TGID_OFFSET, __u32));
    if (child_pid != child_tgid)
        return 0;           /* a thread */
    __u32 zero = 0;
    struct coverage_config *conf = config.lookup(&zero);
    if (!conf)
        return 0;
    struct coverage_watch *watch = watched.lookup(&parent);
    if (!(watch && conf->children) && !named(conf)) {
        watched.delete(&child_tgid);        /* a reused pid */
        return 0;
    }
    struct coverage_watch fresh = {};
    fresh.registry = watch ? watch->registry : 0;
    fresh.since = bpf_ktime_get_ns();
    /* A fork of a process without a core has none either (until it
     * execs, or imports one: the rescan finds that). */
    fresh.state = watch && watch->state == WATCH_NO_CORE ? WATCH_NO_CORE
                                                         : WATCH_PENDING;
    fresh.parent = parent;
    watched.update(&child_tgid, &fresh);
    count(COVERAGE_COUNT_FORKS, 1);
    if (!fresh.registry && (!watch || fresh.state == WATCH_NO_CORE))
        return 0;           /* no core to arm: its exec will tell */
    struct coverage_fork *out = events.ringbuf_reserve(sizeof(*out));
    if (!out) {
        count(COVERAGE_COUNT_MESSAGES_LOST, 1);
        return 0;
    }
    out->kind = COVERAGE_FORK;
    out->tgid = child_tgid;
    out->parent = parent;
    out->pad = 0;
    out->time_ns = fresh.since;
    out->registry = fresh.registry;
    bpf_ringbuf_submit(out, 0);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    void *bprm = (void *)ctx->args[2];
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    __u32 zero = 0;
    struct coverage_config *conf = config.lookup(&zero);
    if (!conf)
        return 0;
    struct coverage_watch *watch = watched.lookup(&tgid);
    if (!watch && !named(conf))
        return 0;
    struct coverage_watch fresh = {};
    fresh.since = bpf_ktime_get_ns();
    fresh.state = WATCH_PENDING;
    watched.update(&tgid, &fresh);
    count(COVERAGE_COUNT_EXECS, 1);
    struct coverage_exec *out = events.ringbuf_reserve(sizeof(*out));
    if (!out) {
        count(COVERAGE_COUNT_MESSAGES_LOST, 1);
        return 0;
    }
    out->kind = COVERAGE_EXEC;
    out->tgid = tgid;
    out->time_ns = fresh.since;
    out->start_code = 0;
    void *task = (void *)bpf_get_current_task();
    void *mm = 0;
    bpf_probe_read_kernel(&mm, sizeof(mm), AT(task, TASK_MM_OFFSET, void *));
    if (mm)
        bpf_probe_read_kernel(&out->start_code, sizeof(out->start_code),
                              AT(mm, MM_START_CODE_OFFSET, __u64));
    bpf_get_current_comm(out->comm, sizeof(out->comm));
    const char *filename = 0;
    bpf_probe_read_kernel(&filename, sizeof(filename),
                          AT(bprm, BINPRM_FILENAME_OFFSET, const char *));
    if (bpf_probe_read_kernel_str(out->filename, sizeof(out->filename), filename) < 0)
        out->filename[0] = 0;
    bpf_ringbuf_submit(out, 0);
    return 0;
}
