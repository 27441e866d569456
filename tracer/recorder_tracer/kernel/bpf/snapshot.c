/* snapshot.c - at a fatal signal, copy the victim's last records aside.
 *
 * `signal_deliver` runs (raw tracepoint signal:signal_deliver) in the
 * context of the thread a signal is delivered to, so its user memory is
 * the victim's: bpf_probe_read_user walks its recorder registry (registry
 * -> topics -> per-CPU shards, probes/include/recorder/registry.h) and
 * copies each shard's last min(N, written) entries into the `snapshots`
 * ring buffer. The process was never armed and paid nothing for it.
 *
 * Fatal means: a fault signal (SEGV, BUS, ILL, FPE, ABRT, TRAP, SYS)
 * delivered to its default action (the core's own dump handler hands the
 * signal back, so the fatal delivery is the second one), or SIGKILL
 * delivered to a thread group marked for death by a signal (kill -9, the
 * OOM killer, the other threads of a crashing process). The kernel
 * delivers that SIGKILL through get_signal() in each thread's own context,
 * with its memory still mapped, so SIGKILL needs no armed topic either. A
 * group ending by exit_group() or exec also kills its other threads with
 * SIGKILL, but with no signal in group_exit_code: not fatal.
 *
 * Where sched_process_exit runs before exit_mm() (Linux 6.16+,
 * SNAPSHOT_EXIT_TRACEPOINT), signal_deliver only sends the FAULT and marks
 * the group `dying`; the copy is made at the group's exit, out of the
 * signal lock's interrupts-off section (and it includes what the other
 * threads recorded until they died).
 *
 * Maps, and who reads them:
 *   registries  tgid -> address of `recorder_registry`   written by the
 *               controller (scan, exec events); copied to a forked child
 *               here, dropped at exec here
 *   captured    tgid -> fault time: one capture per death  deleted at fork
 *               (a reused pid) and exec
 *   dying       tgid -> registry, a death to copy at exit  (6.16+) here
 *   snapshots   ring buffer of FAULT, ENTRY..., END       controller
 *   counters    per-CPU SNAPSHOT_COUNT_*                  controller
 *   layout_*    never written: carry the message layouts to Python
 *
 *   walks       per-CPU state of the walk across tail calls
 *   walk_programs  [0] = walk_more, the walk's continuation
 *
 * Compile-time switches (-D): SNAPSHOT_RECORDS (N), SNAPSHOT_RING_PAGES,
 * SNAPSHOT_CPUS (shard slots to visit: the possible CPUs), SNAPSHOT_PIN_DIR
 * (a quoted bpffs directory for the maps above), and the kernel
 * offsets TASK_PID_OFFSET, TASK_TGID_OFFSET, TASK_SIGNAL_OFFSET,
 * SIGNAL_EXIT_CODE_OFFSET.
 */
#include <linux/signal.h>
#include "snapshot.h"

/* Kernel struct members are read at offsets from the running kernel's BTF
 * (kernel/btf.py), passed as -D: the installed headers may be another
 * kernel's. siginfo and sigaction are user ABI: their layout is fixed. */
#define AT(base, offset, type) ((type *)((char *)(base) + (offset)))
#define SIGINFO_CODE_OFFSET    8
#define SIGINFO_ADDR_OFFSET    16   /* _sifields._sigfault._addr (and _sigsys) */

#ifndef SNAPSHOT_RING_PAGES
#define SNAPSHOT_RING_PAGES 1024
#endif
#ifndef SNAPSHOT_CPUS
#define SNAPSHOT_CPUS RECORDER_MAX_SHARDS   /* shard slots a topic may use */
#endif
#define SNAPSHOT_STEPS 1024     /* walk steps per program run */
#define SNAPSHOT_CALLS 30       /* tail calls (the kernel allows 33) */

#define FATAL_SIGNALS ((1u << SIGSEGV) | (1u << SIGBUS) | (1u << SIGILL) \
                       | (1u << SIGFPE) | (1u << SIGABRT) | (1u << SIGTRAP) \
                       | (1u << SIGSYS))
#define FAULT_SIGNALS ((1u << SIGSEGV) | (1u << SIGBUS) | (1u << SIGILL) \
                       | (1u << SIGFPE) | (1u << SIGTRAP) | (1u << SIGSYS))

#ifdef SNAPSHOT_PIN_DIR
/* Pinned (kernel/pins.py): with the links pinned too, captures go on while
 * no controller runs, and the next one reads them and the registries. */
BPF_TABLE_PINNED("hash", __u32, __u64, registries, 65536,
                 SNAPSHOT_PIN_DIR "/registries");
BPF_TABLE_PINNED("hash", __u32, __u64, captured, 65536,
                 SNAPSHOT_PIN_DIR "/captured");
/* BPF_RINGBUF_OUTPUT with a pinned path (bcc has no macro for it). */
struct snapshots_table_t {
    int key;
    u32 leaf;
    int (*ringbuf_output)(void *, u64, u64);
    void *(*ringbuf_reserve)(u64);
    void (*ringbuf_discard)(void *, u64);
    void (*ringbuf_submit)(void *, u64);
    u32 max_entries;
};
__attribute__((section("maps/ringbuf:" SNAPSHOT_PIN_DIR "/snapshots")))
struct snapshots_table_t snapshots = {
    .max_entries = SNAPSHOT_RING_PAGES * PAGE_SIZE };
BPF_ANNOTATE_KV_PAIR(snapshots, int, u32);
#ifdef SNAPSHOT_EXIT_TRACEPOINT
BPF_TABLE_PINNED("hash", __u32, __u64, dying, 65536, SNAPSHOT_PIN_DIR "/dying");
#endif
#else
BPF_HASH(registries, __u32, __u64, 65536);
BPF_HASH(captured, __u32, __u64, 65536);
BPF_RINGBUF_OUTPUT(snapshots, SNAPSHOT_RING_PAGES);
#ifdef SNAPSHOT_EXIT_TRACEPOINT
BPF_HASH(dying, __u32, __u64, 65536);
#endif
#endif
BPF_PERCPU_ARRAY(counters, __u64, SNAPSHOT_COUNT_COUNT);
BPF_ARRAY(layout_fault, struct snapshot_fault, 1);
BPF_ARRAY(layout_entry, struct snapshot_entry, 1);
BPF_ARRAY(layout_end, struct snapshot_end, 1);

/* The walk's state, kept per CPU across tail calls (the stack is not).
 * A program does not run again on a CPU while it runs there (the kernel's
 * recursion guard skips it), so two walks never share one. */
struct walk {
    __u64 topic;        /* address of the topic being walked, 0 at the end */
    __u64 shard;        /* address of the shard being copied */
    __u64 next;         /* index of the next entry to copy */
    __u64 remaining;    /* entries left to copy in this shard */
    __u32 mask;
    __u32 slot;         /* next shard slot of the topic to open */
    __u32 tgid;
    __u32 topics;
    __u32 shards;
    __u32 calls;        /* tail calls made */
    __u64 sent;
    __u64 lost;
};
BPF_PERCPU_ARRAY(walks, struct walk, 1);
BPF_PROG_ARRAY(walk_programs, 1);       /* [0]: walk_more, set by Python */

static __always_inline void count(__u32 counter, __u64 amount)
{
    __u64 *value = counters.lookup(&counter);
    if (value)
        __sync_fetch_and_add(value, amount);
}

static __always_inline void copy_entry(struct walk *walk)
{
    __u64 index = walk->next;
    __u64 address = walk->shard + RECORDER_SHARD_HEADER
                    + (index & walk->mask) * sizeof(struct recorder_record);
    walk->next++;
    walk->remaining--;
    struct snapshot_entry *out = snapshots.ringbuf_reserve(sizeof(*out));
    if (!out) {
        walk->lost++;
        return;
    }
    out->kind = SNAPSHOT_ENTRY;
    out->tgid = walk->tgid;
    out->shard_cpu = walk->slot - 1;
    out->status = 0;
    out->index = index;
    if (bpf_probe_read_user(&out->entry, sizeof(out->entry), (void *)address)) {
        __builtin_memset(&out->entry, 0, sizeof(out->entry));
        out->status = SNAPSHOT_ENTRY_UNREADABLE;
    } else {
        /* The seqlock reader's check: the sequence expected, in the copy
         * and after it. A thread of the victim still running could be
         * rewriting the slot. */
        __u64 after = 0;
        bpf_probe_read_user(&after, sizeof(after),
                            (void *)(address + offsetof(struct recorder_record,
                                                        sequence)));
        if (out->entry.sequence != index + 1 || after != index + 1)
            out->status = SNAPSHOT_ENTRY_TORN;
    }
    bpf_ringbuf_submit(out, BPF_RB_NO_WAKEUP);
    walk->sent++;
}

/* Opens the topic's next shard slot: the last min(N, written, capacity)
 * entries of that shard are copied next. */
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
    __u64 count = header.head;
    if (count > (__u64)header.mask + 1)
        count = (__u64)header.mask + 1;
    if (count > SNAPSHOT_RECORDS)
        count = SNAPSHOT_RECORDS;
    walk->shard = shard;
    walk->mask = header.mask;
    walk->next = header.head - count;
    walk->remaining = count;
    walk->shards++;
}

/* Up to SNAPSHOT_STEPS steps of the walk (a step copies an entry, opens a
 * shard or moves to the next topic); returns 1 when the walk is over.
 * bcc cannot load bpf_loop callbacks, so the loop is a bounded one and
 * longer walks continue in a tail call. */
static __always_inline int walk_steps(struct walk *walk)
{
    for (int step = 0; step < SNAPSHOT_STEPS; step++) {
        if (walk->remaining) {
            copy_entry(walk);
            continue;
        }
        if (!walk->topic)
            return 1;
        if (walk->slot < SNAPSHOT_CPUS) {
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
        if (next && ++walk->topics > SNAPSHOT_TOPICS)
            return 1;
    }
    return 0;
}

static __always_inline void walk_end(struct walk *walk)
{
    if (walk->lost)
        count(SNAPSHOT_COUNT_LOST, walk->lost);
    struct snapshot_end *end = snapshots.ringbuf_reserve(sizeof(*end));
    if (!end) {
        count(SNAPSHOT_COUNT_MESSAGES_LOST, 1);
        return;
    }
    end->kind = SNAPSHOT_END;
    end->tgid = walk->tgid;
    end->topics = walk->topics;
    end->shards = walk->shards;
    end->sent = walk->sent;
    end->lost = walk->lost;
    end->time_ns = bpf_ktime_get_ns();
    bpf_ringbuf_submit(end, BPF_RB_FORCE_WAKEUP);
}

/* Runs the walk on; tail-calls itself until it is over or out of calls. */
static __always_inline int walk_on(struct bpf_raw_tracepoint_args *ctx,
                                   struct walk *walk)
{
    if (!walk_steps(walk) && walk->calls < SNAPSHOT_CALLS) {
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

/* The signal that kills the process at this delivery, or 0 if it does not
 * (yet) kill it. Sets SNAPSHOT_GROUP_EXIT in *flags for a SIGKILL. */
static __always_inline int fatal_signal(int sig, void *action,
                                        __u32 *flags)
{
    if (sig == SIGKILL) {
        void *task = (void *)bpf_get_current_task();
        void *signal = 0;
        int code = 0;
        bpf_probe_read_kernel(&signal, sizeof(signal),
                              AT(task, TASK_SIGNAL_OFFSET, void *));
        if (signal)
            bpf_probe_read_kernel(&code, sizeof(code),
                                  AT(signal, SIGNAL_EXIT_CODE_OFFSET, int));
        *flags = SNAPSHOT_GROUP_EXIT;
        return code & 0x7f;     /* 0: exit_group() or exec, not a death */
    }
    if (sig <= 0 || sig >= 32 || !((1u << sig) & FATAL_SIGNALS))
        return 0;
    void *handler = (void *)1;
    bpf_probe_read_kernel(&handler, sizeof(handler), action);  /* sa_handler */
    return handler == SIG_DFL ? sig : 0;
}

/* Copies the last records of every topic of the registry at `registry`. */
static __always_inline int walk_registry(struct bpf_raw_tracepoint_args *ctx,
                                         __u32 tgid, __u64 registry)
{
    __u32 zero = 0;
    struct walk *walk = walks.lookup(&zero);
    if (!walk)
        return 0;
    __builtin_memset(walk, 0, sizeof(*walk));
    walk->tgid = tgid;
    if (bpf_probe_read_user(&walk->topic, sizeof(walk->topic),
                            (void *)(registry
                                     + offsetof(struct recorder_registry, topics))))
        walk->topic = 0;
    if (walk->topic)
        walk->topics = 1;
    return walk_on(ctx, walk);
}

RAW_TRACEPOINT_PROBE(signal_deliver)
{
    int sig = (int)ctx->args[0];
    void *info = (void *)ctx->args[1];
    void *action = (void *)ctx->args[2];       /* struct k_sigaction */
    __u32 flags = 0;
    int killer = fatal_signal(sig, action, &flags);
    if (!killer)
        return 0;
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tgid = pid_tgid >> 32;
    __u64 *registry = registries.lookup(&tgid);
    if (!registry) {
        count(SNAPSHOT_COUNT_UNKNOWN, 1);
        return 0;
    }
    __u64 now = bpf_ktime_get_ns();
    if (captured.insert(&tgid, &now))   /* another thread got there first */
        return 0;
    count(SNAPSHOT_COUNT_FATAL, 1);

    struct snapshot_fault *fault = snapshots.ringbuf_reserve(sizeof(*fault));
    if (!fault) {
        count(SNAPSHOT_COUNT_MESSAGES_LOST, 1);
        return 0;
    }
    fault->kind = SNAPSHOT_FAULT;
    fault->tgid = tgid;
    fault->tid = (__u32)pid_tgid;
    fault->signal = killer;
    fault->flags = flags;
    fault->code = 0;
    fault->address = 0;
    if (info && !(flags & SNAPSHOT_GROUP_EXIT)) {
        bpf_probe_read_kernel(&fault->code, sizeof(fault->code),
                              AT(info, SIGINFO_CODE_OFFSET, int));
        /* si_addr is meaningful for kernel-raised fault signals only. */
        if (((1u << killer) & FAULT_SIGNALS) && fault->code > 0)
            bpf_probe_read_kernel(&fault->address, sizeof(fault->address),
                                  AT(info, SIGINFO_ADDR_OFFSET, __u64));
    }
    fault->time_ns = now;
    fault->registry = *registry;
    bpf_get_current_comm(fault->comm, sizeof(fault->comm));
    bpf_ringbuf_submit(fault, BPF_RB_NO_WAKEUP);
    count(SNAPSHOT_COUNT_CAPTURED, 1);
    __u64 address = *registry;
#ifdef SNAPSHOT_EXIT_TRACEPOINT
    /* The kernel delivers signals holding the signal lock with interrupts
     * off, and a walk reads up to SNAPSHOT_CALLS x SNAPSHOT_STEPS user
     * words: it waits for the group's exit (sched_process_exit below),
     * where the memory is still there and interrupts are on. */
    dying.update(&tgid, &address);
    return 0;
#else
    return walk_registry(ctx, tgid, address);
#endif
}

#ifdef SNAPSHOT_EXIT_TRACEPOINT
/* sched_process_exit(task, group_dead): before exit_mm() since 6.16. The
 * group's last thread walks what a fatal signal marked. */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    if (!ctx->args[1])
        return 0;           /* not the group's last thread */
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    __u64 *registry = dying.lookup(&tgid);
    if (!registry)
        return 0;
    __u64 address = *registry;
    dying.delete(&tgid);
    return walk_registry(ctx, tgid, address);
}
#endif

/* A forked process has its parent's memory, registry included. A new
 * process also means its pid may be reused: forget an old capture. */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    void *child = (void *)ctx->args[1];     /* struct task_struct */
    __u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;   /* the forker */
    __u32 child_pid = 0, child_tgid = 0;
    bpf_probe_read_kernel(&child_pid, sizeof(child_pid),
                          AT(child, TASK_PID_OFFSET, __u32));
    bpf_probe_read_kernel(&child_tgid, sizeof(child_tgid),
                          AT(child, TASK_TGID_OFFSET, __u32));
    if (child_pid != child_tgid)
        return 0;           /* a thread */
    captured.delete(&child_tgid);
#ifdef SNAPSHOT_EXIT_TRACEPOINT
    dying.delete(&child_tgid);
#endif
    __u64 *registry = registries.lookup(&parent_tgid);
    if (registry) {
        __u64 address = *registry;
        registries.update(&child_tgid, &address);
    } else {
        registries.delete(&child_tgid);
    }
    return 0;
}

/* A new program: the old registry address means nothing now. */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    registries.delete(&tgid);
    captured.delete(&tgid);
#ifdef SNAPSHOT_EXIT_TRACEPOINT
    dying.delete(&tgid);
#endif
    return 0;
}
