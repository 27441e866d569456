/* harvest.c - turn recorder probe hits into metrics, flight and stream records.
 *
 * Attached (by tracer/arm.py) to `recorder:<topic>` USDT sites, per PID, with
 * the topic's semaphore as the uprobe's reference counter. The probe's only
 * argument, always in %rax (probes/include/recorder/probe.h), is the address
 * of the entry the process just wrote; one bpf_probe_read_user copies it.
 *
 * Maps, and who reads them:
 *   stats        (pid, topic) -> count, last time     controller: metrics
 *   counters     per-CPU hits, streamed, refused      controller: loss check
 *   flight       per-CPU ring of the last records      controller: snapshots
 *   flight_head  per-CPU index into flight             controller: snapshots
 *   stream       per-CPU perf buffer                   controller: live trace
 *   scratch      per-CPU record being built (too big for the BPF stack)
 *
 * Compile-time switches (-D): HARVEST_STREAM (send to the stream),
 * HARVEST_FLIGHT (keep in the flight ring), FLIGHT_ENTRIES.
 */
#include <uapi/linux/ptrace.h>
#include "harvest.h"

BPF_HASH(stats, struct topic_key, struct topic_stats, 65536);
BPF_PERCPU_ARRAY(counters, __u64, COUNTER_COUNT);
BPF_PERCPU_ARRAY(scratch, struct harvest_record, 1);
#ifdef HARVEST_FLIGHT
BPF_PERCPU_ARRAY(flight, struct harvest_record, FLIGHT_ENTRIES);
BPF_PERCPU_ARRAY(flight_head, __u64, 1);
#endif
#ifdef HARVEST_STREAM
BPF_PERF_OUTPUT(stream);
#endif

static __always_inline void count(__u32 counter)
{
    __u64 *value = counters.lookup(&counter);
    if (value)
        *value += 1;        /* per-CPU: no atomic needed */
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

int harvest(struct pt_regs *ctx)
{
    __u32 zero = 0;
    struct harvest_record *record = scratch.lookup(&zero);
    if (!record)
        return 0;
    count(COUNTER_HITS);

    __u64 pid_tgid = bpf_get_current_pid_tgid();
    record->pid = pid_tgid >> 32;
    record->harvest_ns = bpf_ktime_get_ns();
    record->probe_address = PT_REGS_IP(ctx);
    record->status = 0;
    if (bpf_probe_read_user(&record->entry, sizeof(record->entry),
                            (void *)PT_REGS_RC(ctx)) != 0) {
        record->status = HARVEST_ENTRY_UNREADABLE;
        __builtin_memset(&record->entry, 0, sizeof(record->entry));
    }

    struct topic_key key = { .pid = record->pid, .topic_id = record->entry.topic_id };
    struct topic_stats initial = {};
    struct topic_stats *stats_value = stats.lookup_or_try_init(&key, &initial);
    if (stats_value) {
        __sync_fetch_and_add(&stats_value->count, 1);
        stats_value->last_ns = record->harvest_ns;
    }

#if defined(HARVEST_STREAM) || defined(HARVEST_FLIGHT)
    bpf_get_current_comm(record->comm, sizeof(record->comm));
#pragma unroll
    for (int i = 0; i < HARVEST_STRINGS; i++)
        record->strings[i].length = 0;
    fetch_strings(record);
#endif

#ifdef HARVEST_FLIGHT
    __u64 *head = flight_head.lookup(&zero);
    if (head) {
        __u32 slot = *head % FLIGHT_ENTRIES;
        struct harvest_record *kept = flight.lookup(&slot);
        if (kept) {
            __builtin_memcpy(kept, record, sizeof(*record));
            *head += 1;
            count(COUNTER_FLIGHT);
        }
    }
#endif

#ifdef HARVEST_STREAM
    if (stream.perf_submit(ctx, record, sizeof(*record)) == 0)
        count(COUNTER_STREAMED);
    else
        count(COUNTER_STREAM_FAILED);
#endif
    return 0;
}
