/* harvest.c - turn recorder probe hits into metrics, flight and stream records.
 *
 * Attached (by kernel/arm.py) to `recorder:<topic>` USDT sites, per PID, with
 * the topic's semaphore as the uprobe's reference counter. The probe's first
 * argument, always in %rax (probes/include/recorder/probe.h), is the address
 * of the entry the process just wrote; one bpf_probe_read_user copies it.
 * The others, in fixed registers, copy the entry's words that metrics need
 * (args[0..3], timestamp, topic id, kinds, flags): metrics read only those.
 * Two entry points: `harvest` for a C topic's own probe, and
 * `harvest_shared` for `recorder:recorder_dynamic`, the probe run-time
 * topics share (its metrics need the entry's topic id).
 *
 * Maps, and who reads them:
 *   counters      per-CPU hits, streamed, refused...  controller: loss check
 *   stats         per-CPU site metrics (mmapable)     controller: metrics
 *   value_args    site -> args[] index to aggregate   written by the controller
 *   flight        per-CPU ring of the last records    controller: snapshots
 *   flight_head   per-CPU index into flight           controller: snapshots
 *   stream_rings  one BPF ring buffer per CPU, made   controller: live trace
 *                 and read (mmap) by kernel/stream.py
 *   stream_config records per forced wakeup           written by the controller
 *   record_layout never written: carries struct harvest_record's compiled
 *                 layout to Python
 *
 * Costs, measured on the benchmark machine (bench/README.md): a trap with an
 * empty program ~455 ns; a user-memory read ~70-90 ns whatever its size;
 * bpf_get_current_comm ~40 ns; bpf_ktime_get_ns ~30 ns; a hash map lookup
 * ~30 ns. So metrics read no user memory (values, timestamps and topic ids
 * come in the probe's registers) and use an open-addressed array (~8 ns), the clock is read only for an unreadable entry, comm only for the
 * stream, strings only when the entry has some, and records are built in
 * place in the flight slot and the stream ring (no scratch copy).
 *
 * Compile-time switches (-D): HARVEST_METRICS (count per site),
 * HARVEST_STREAM (send to the stream), HARVEST_FLIGHT (keep in the flight
 * ring), FLIGHT_ENTRIES, HARVEST_STRING_MAX, HARVEST_CPUS, HARVEST_PIN_DIR
 * (a quoted bpffs directory: pin the flight ring and the metrics tables
 * there, or reuse those a previous controller pinned).
 */
#include <uapi/linux/ptrace.h>
#include "harvest.h"

BPF_PERCPU_ARRAY(counters, __u64, COUNTER_COUNT);
BPF_ARRAY(record_layout, struct harvest_record, 1);
#ifdef HARVEST_METRICS
#ifdef HARVEST_PIN_DIR
/* Pinned (kernel/pins.py): a restarted controller (the daemon) finds the
 * counts its predecessor's pinned links kept adding while none ran. */
BPF_TABLE_PINNED("array", __u32, struct site_stats, stats,
                 HARVEST_CPUS * STATS_SLOTS, HARVEST_PIN_DIR "/stats",
                 BPF_F_MMAPABLE);
BPF_TABLE_PINNED("hash", struct site_key, __u32, value_args, VALUE_ARGS_MAX,
                 HARVEST_PIN_DIR "/value_args");
#else
BPF_F_TABLE("array", __u32, struct site_stats, stats,
            HARVEST_CPUS * STATS_SLOTS, BPF_F_MMAPABLE);
BPF_HASH(value_args, struct site_key, __u32, VALUE_ARGS_MAX);
#endif
#endif
#ifdef HARVEST_FLIGHT
#ifdef HARVEST_PIN_DIR
/* Pinned (kernel/pins.py): reused by the next controller after this one
 * dies, with what armed processes recorded meanwhile. */
BPF_TABLE_PINNED("percpu_array", int, struct harvest_record, flight,
                 FLIGHT_ENTRIES, HARVEST_PIN_DIR "/flight");
BPF_TABLE_PINNED("percpu_array", int, __u64, flight_head, 1,
                 HARVEST_PIN_DIR "/flight_head");
#else
BPF_PERCPU_ARRAY(flight, struct harvest_record, FLIGHT_ENTRIES);
BPF_PERCPU_ARRAY(flight_head, __u64, 1);
#endif
#endif
#ifdef HARVEST_STREAM
/* The template of the per-CPU rings (the kernel wants one to type the
 * outer map); kernel/stream.py creates the real rings, in any size. */
BPF_RINGBUF_OUTPUT(stream_template, 1);
BPF_ARRAY_OF_MAPS(stream_rings, "stream_template", HARVEST_CPUS);
BPF_ARRAY(stream_config, __u64, 1);     /* [0]: wakeup mask (2^n - 1) */
#endif

/* Adds one to a per-CPU counter; returns its previous value. Atomic, so the
 * count stays exact on a preemptible kernel, where another task's hit can
 * run this program on the same CPU in between. */
static __always_inline __u64 count(__u32 counter)
{
    __u64 *value = counters.lookup(&counter);
    return value ? __sync_fetch_and_add(value, 1) : 0;
}

#ifdef HARVEST_METRICS
/* The probe's registers (probes/PROBES.md, "USDT probes"). */
#define PROBE_ARG0(ctx)       ((ctx)->dx)
#define PROBE_ARG1(ctx)       ((ctx)->cx)
#define PROBE_TIMESTAMP(ctx)  ((ctx)->si)
#define PROBE_TOPIC_ID(ctx)   ((__u32)((ctx)->di >> 32))
#define PROBE_META(ctx)       ((ctx)->r8)   /* arg_types | cpu | nargs | flags */
#define PROBE_ARG2(ctx)       ((ctx)->r9)
#define PROBE_ARG3(ctx)       ((ctx)->r10)

/* log2 bucket: 0 for 0 (and negatives), i for [2^(i-1), 2^i), capped. */
static __always_inline __u32 log2_bucket(__u64 v)
{
    if ((__s64)v <= 0)
        return 0;
    __u32 r = 1, shift;
    shift = (v > 0xFFFFFFFFull) << 5; v >>= shift; r += shift;
    shift = (v > 0xFFFF) << 4; v >>= shift; r += shift;
    shift = (v > 0xFF) << 3; v >>= shift; r += shift;
    shift = (v > 0xF) << 2; v >>= shift; r += shift;
    shift = (v > 0x3) << 1; v >>= shift; r += shift;
    r += (__u32)(v >> 1);
    return r < HIST_BUCKETS ? r : HIST_BUCKETS - 1;
}

static __always_inline __u64 probe_arg(struct pt_regs *ctx, __u32 index)
{
    /* Load all four first: selecting the register by index would make clang
     * compute a variable context offset, which the verifier refuses. */
    __u64 a0 = PROBE_ARG0(ctx), a1 = PROBE_ARG1(ctx);
    __u64 a2 = PROBE_ARG2(ctx), a3 = PROBE_ARG3(ctx);
    asm volatile("" : "+r"(a0), "+r"(a1), "+r"(a2), "+r"(a3));
    return index == 0 ? a0 : index == 1 ? a1 : index == 2 ? a2 : a3;
}

/* Aggregates one record into its slot; all from registers. min/max and
 * last_ns are plain stores: a slot is per CPU, so only a hit preempted on
 * this CPU by another hit of the same site could race them. */
static __always_inline void aggregate(struct site_stats *slot, struct pt_regs *ctx,
                                      int legacy)
{
    __sync_fetch_and_add(&slot->count, 1);
    if (legacy)
        return;                 /* an old probe: its registers hold no copies */
    __u64 now = PROBE_TIMESTAMP(ctx);
    __u64 last = slot->last_ns;
    slot->last_ns = now;
    if (last && now >= last)
        __sync_fetch_and_add(&slot->intervals[log2_bucket(now - last)
                                              & (HIST_BUCKETS - 1)], 1);
    __u64 meta = PROBE_META(ctx);
    __u32 flags = meta >> 56, nargs = (meta >> 48) & 0xff;
    __u32 arg = slot->arg;
    if (flags & RECORDER_ENTRY_SPAN_BEGIN)
        return;                         /* a span's start carries no value */
    if (flags & RECORDER_ENTRY_SPAN_END) {
        arg = 0;                        /* args[0] is the duration in ns */
        slot->spans = 1;
    }
    if (arg >= nargs || RECORDER_ARG_KIND(meta, arg) != RECORDER_ARG_INT)
        return;                         /* no such argument, or not an integer */
    __s64 value = probe_arg(ctx, arg);
    __sync_fetch_and_add(&slot->valued, 1);
    __sync_fetch_and_add(&slot->sum, value);
    if (value < slot->min)
        slot->min = value;
    if (value > slot->max)
        slot->max = value;
    __sync_fetch_and_add(&slot->values[log2_bucket(value) & (HIST_BUCKETS - 1)], 1);
}

static __always_inline void count_site(struct pt_regs *ctx, __u32 pid,
                                       __u64 address, __u32 topic_id, int legacy)
{
    __u32 cpu = bpf_get_smp_processor_id();
    __u64 hash = (address ^ ((__u64)pid << 32) ^ topic_id) * 0x9E3779B97F4A7C15ull;
    __u32 first = hash >> (64 - STATS_BITS);
#pragma unroll
    for (int i = 0; i < STATS_PROBES; i++) {
        __u32 index = cpu * STATS_SLOTS + ((first + i) & (STATS_SLOTS - 1));
        struct site_stats *slot = stats.lookup(&index);
        if (!slot)
            break;
        if (slot->address == address && slot->pid == pid
            && slot->topic_id == topic_id) {
            aggregate(slot, ctx, legacy);
            return;
        }
        if (slot->address == 0) {       /* claim it: key and choice first */
            struct site_key key = {.address = address, .pid = pid,
                                   .topic_id = topic_id};
            __u32 *chosen = value_args.lookup(&key);
            slot->arg = chosen && *chosen < VALUE_ARGS ? *chosen : 0;
            slot->first_ns = PROBE_TIMESTAMP(ctx);
            slot->min = 0x7fffffffffffffffll;
            slot->max = -0x7fffffffffffffffll - 1;
            slot->pid = pid;
            slot->topic_id = topic_id;
            slot->address = address;
            aggregate(slot, ctx, legacy);
            return;
        }
    }
    count(COUNTER_STATS_FULL);
}
#endif

#if defined(HARVEST_STREAM) || defined(HARVEST_FLIGHT)
/* Bit 2i+1 set for each argument i of kind RECORDER_ARG_STRING (binary 10). */
static __always_inline __u32 string_arguments(__u32 arg_types)
{
    return arg_types & ~(arg_types << 1) & 0xaaaaaau;
}

static __always_inline void fetch_strings(struct harvest_record *record)
{
    __u32 found = 0;
#pragma unroll
    for (int i = 0; i < RECORDER_MAX_ARGS; i++) {
        if (i >= record->entry.nargs || found >= HARVEST_STRINGS)
            break;
        if (RECORDER_ARG_KIND(record->entry.arg_types, i) != RECORDER_ARG_STRING)
            continue;
        struct harvest_string *string = &record->strings[found & (HARVEST_STRINGS - 1)];
        string->length = bpf_probe_read_user_str(string->text, sizeof(string->text),
                                                 (void *)record->entry.args[i]);
        found++;
    }
}

/* Copies the entry at `address` (the probe's argument). The core writes only
 * the header and the arguments used, so the unused tail of an entry that
 * crosses a page boundary can lie on a page the process never touched, one
 * the kernel has not mapped yet, and the whole read fails (the helper may not
 * fault pages in). Then the part the writer wrote is read instead; the rest
 * stays zero. Returns 0 when the entry was read. */
static __always_inline int read_entry(struct recorder_record *entry, __u64 address)
{
    if (bpf_probe_read_user(entry, sizeof(*entry), (void *)address) == 0)
        return 0;
    const __u32 header = offsetof(struct recorder_record, args);
    if (bpf_probe_read_user(entry, header, (void *)address) != 0
        || entry->nargs > RECORDER_MAX_ARGS)
        return -1;
    __u32 used = entry->nargs * sizeof(entry->args[0]);
    if (used > sizeof(entry->args))         /* for the verifier */
        return -1;
    return bpf_probe_read_user(entry->args, used, (void *)(address + header));
}

/* Builds the record in place: in the flight slot or the stream ring. */
static __always_inline void fill(struct harvest_record *record,
                                 struct pt_regs *ctx, __u32 pid)
{
    record->pid = pid;
    record->status = 0;
    record->harvest_ns = 0;
    record->probe_address = PT_REGS_IP(ctx);
#ifdef HARVEST_STREAM
    /* ~40 ns: only the stream's reader needs it at once; a snapshot of the
     * flight ring names processes itself (comm stays empty there). */
    bpf_get_current_comm(record->comm, sizeof(record->comm));
#endif
    if (read_entry(&record->entry, PT_REGS_RC(ctx)) != 0) {
        __builtin_memset(&record->entry, 0, sizeof(record->entry));
        record->status = HARVEST_ENTRY_UNREADABLE;
        record->harvest_ns = bpf_ktime_get_ns();
    }
    /* The slots past the entry's string arguments are left as they were:
     * readers take one slot per %s argument, in order. */
    if (string_arguments(record->entry.arg_types))
        fetch_strings(record);
}
#endif

/* `legacy`: a probe built before its registers carried copies of the
 * entry's words (its note has one argument): count only, and read the
 * shared probe's topic id from the entry (one user-memory read). */
static __always_inline int harvest_hit(struct pt_regs *ctx, int shared, int legacy)
{
    __u64 hits = count(COUNTER_HITS);
    __u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct harvest_record *record = 0;

#ifdef HARVEST_FLIGHT
    __u32 zero = 0;
    __u64 *head = flight_head.lookup(&zero);
    if (head) {
        /* Claimed atomically: a uprobe's program is preemptible, and
         * another hit on this CPU may run before this one is done. */
        __u64 claim = __sync_fetch_and_add(head, 1);
        __u32 slot = claim % FLIGHT_ENTRIES;
        record = flight.lookup(&slot);
        if (record) {
            record->flight_begun = claim + 1;
            asm volatile("" ::: "memory");
            fill(record, ctx, pid);
            asm volatile("" ::: "memory");
            record->flight_done = claim + 1;
            count(COUNTER_FLIGHT);
        }
    }
#endif

#ifdef HARVEST_STREAM
    __u32 cpu = bpf_get_smp_processor_id();
    void *ring = stream_rings.lookup(&cpu);
    struct harvest_record *out =
        ring ? bpf_ringbuf_reserve(ring, sizeof(*out), 0) : 0;
    if (out) {
        if (record)
            __builtin_memcpy(out, record, sizeof(*out));
        else
            fill(out, ctx, pid);
        __u32 zero_config = 0;
        __u64 *mask = stream_config.lookup(&zero_config);
        /* Wake the controller every 2^n records, never per record: a
         * wakeup is an interrupt that costs microseconds in a VM. */
        __u64 wake = mask && (hits & *mask) == *mask
                     ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
        bpf_ringbuf_submit(out, wake);
        count(COUNTER_STREAMED);
    } else {
        count(COUNTER_STREAM_FAILED);
    }
#endif

#ifdef HARVEST_METRICS
    /* A C topic is named by its site; the shared probe's by the entry's
     * topic id, which its registers carry. */
    __u32 topic_id = HARVEST_NO_TOPIC;
    if (shared && !legacy)
        topic_id = PROBE_TOPIC_ID(ctx);
    else if (shared && bpf_probe_read_user(&topic_id, sizeof(topic_id),
                                           (void *)PT_REGS_RC(ctx)
                                           + offsetof(struct recorder_record, topic_id)))
        topic_id = HARVEST_NO_TOPIC;
    count_site(ctx, pid, PT_REGS_IP(ctx), topic_id, legacy);
#endif
    return 0;
}

int harvest(struct pt_regs *ctx)
{
    return harvest_hit(ctx, false, false);
}

int harvest_shared(struct pt_regs *ctx)
{
    return harvest_hit(ctx, true, false);
}

int harvest_legacy(struct pt_regs *ctx)
{
    return harvest_hit(ctx, false, true);
}

int harvest_shared_legacy(struct pt_regs *ctx)
{
    return harvest_hit(ctx, true, true);
}
