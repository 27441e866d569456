/* usdt.c - decode the arguments of any USDT probe and stream them.
 *
 * One program, `usdt_hit`, is attached (by kernel/usdt.py through
 * kernel/arm.py) to each selected probe site in each traced process, with
 * the probe's semaphore as the uprobe's reference counter. At a hit,
 * PT_REGS_IP(ctx) is the site's runtime address (load base + the note's
 * address); with the PID it finds the site's argument specs, which the
 * controller lowered from the note's argument string ("-4@%eax 8@-40(%rbp)
 * 4@$5"). Each argument is read from a register, from user memory at a
 * register plus an offset or at an absolute address, or is a constant;
 * then truncated to its size and sign- or zero-extended. Arguments marked
 * `fetch_string` also get the string they point to, bounded.
 *
 * Maps, and who reads them:
 *   sites     (pid, ip) -> argument specs     written by the controller
 *   counters  per-CPU hits, streamed, refused, unknown sites
 *                                             controller: loss check
 *   stream    per-CPU perf buffer of events   controller: live trace
 *   scratch   per-CPU event being built (too big for the BPF stack)
 *
 * Compile-time settings (-D): USDT_STRING_MAX, USDT_MAX_SITES.
 */
#include <uapi/linux/ptrace.h>
#include "usdt.h"

BPF_HASH(sites, struct usdt_site_key, struct usdt_site, USDT_MAX_SITES);
BPF_PERCPU_ARRAY(counters, __u64, USDT_COUNTER_COUNT);
BPF_PERCPU_ARRAY(scratch, struct usdt_event, 1);
BPF_PERF_OUTPUT(stream);

static __always_inline void count(__u32 counter)
{
    __u64 *value = counters.lookup(&counter);
    if (value)
        *value += 1;        /* per-CPU: no atomic needed */
}

static __always_inline int read_register(struct pt_regs *ctx, __u16 offset,
                                         __u64 *value)
{
    if (offset > sizeof(struct pt_regs) - sizeof(__u64))
        return -1;
    return bpf_probe_read_kernel(value, sizeof(*value), (void *)ctx + offset);
}

static __always_inline int read_memory(__u64 address, __u8 size, __u64 *value)
{
    switch (size) {
    case 1: {
        __u8 byte = 0;
        int error = bpf_probe_read_user(&byte, sizeof(byte), (void *)address);
        *value = byte;
        return error;
    }
    case 2: {
        __u16 half = 0;
        int error = bpf_probe_read_user(&half, sizeof(half), (void *)address);
        *value = half;
        return error;
    }
    case 4: {
        __u32 word = 0;
        int error = bpf_probe_read_user(&word, sizeof(word), (void *)address);
        *value = word;
        return error;
    }
    default:
        return bpf_probe_read_user(value, sizeof(*value), (void *)address);
    }
}

/* The argument's value, extended to 64 bits; non-zero if unreadable. */
static __always_inline int read_argument(struct pt_regs *ctx,
                                         const struct usdt_arg_spec *spec,
                                         __u64 *out)
{
    __u64 raw = 0;
    __u64 base = 0;
    switch (spec->kind) {
    case USDT_ARG_CONST:
        raw = spec->value;
        break;
    case USDT_ARG_REG:
        if (read_register(ctx, spec->reg_offset, &raw))
            return -1;
        break;
    case USDT_ARG_DEREF:
        if (read_register(ctx, spec->reg_offset, &base))
            return -1;
        if (read_memory(base + spec->value, spec->size, &raw))
            return -1;
        break;
    case USDT_ARG_ABS:
        if (read_memory(spec->value, spec->size, &raw))
            return -1;
        break;
    default:
        return -1;
    }
    __u32 shift = 64 - 8 * (spec->size & 15);
    if (shift > 0 && shift < 64) {
        if (spec->is_signed)
            raw = (__u64)((__s64)(raw << shift) >> shift);
        else
            raw = (raw << shift) >> shift;
    }
    *out = raw;
    return 0;
}

int usdt_hit(struct pt_regs *ctx)
{
    __u32 zero = 0;
    struct usdt_event *event = scratch.lookup(&zero);
    if (!event)
        return 0;
    count(USDT_COUNTER_HITS);

    __u64 pid_tgid = bpf_get_current_pid_tgid();
    event->ts = bpf_ktime_get_ns();
    event->ip = PT_REGS_IP(ctx);
    event->pid = pid_tgid >> 32;
    event->tid = (__u32)pid_tgid;
    event->status = 0;
    event->nargs = 0;
    event->unreadable = 0;
    bpf_get_current_comm(event->comm, sizeof(event->comm));

    struct usdt_site_key key;
    __builtin_memset(&key, 0, sizeof(key));
    key.pid = event->pid;
    key.ip = event->ip;
    struct usdt_site *site = sites.lookup(&key);
    if (!site) {
        event->status = USDT_SITE_UNKNOWN;
        count(USDT_COUNTER_UNKNOWN_SITE);
    }
    __u32 strings = 0;      /* strings[] sent: up to the last one asked for */
#pragma unroll
    for (int i = 0; i < USDT_MAX_ARGS; i++) {
        event->args[i] = 0;
        event->strings[i].length = 0;
        if (!site || i >= site->nargs)
            continue;
        event->nargs = i + 1;
        if (site->args[i].fetch_string)
            strings = i + 1;
        if (read_argument(ctx, &site->args[i], &event->args[i])) {
            event->unreadable |= 1u << i;
            continue;
        }
        if (site->args[i].fetch_string && event->args[i])
            event->strings[i].length = bpf_probe_read_user_str(
                event->strings[i].text, USDT_STRING_MAX, (void *)event->args[i]);
    }

    /* Send only the strings asked for: the controller reads strings[i]
     * only where argument i fetches one. */
    __u64 size = __builtin_offsetof(struct usdt_event, strings) +
                 strings * sizeof(struct usdt_string);
    if (size > sizeof(*event))
        size = sizeof(*event);
    if (stream.perf_submit(ctx, event, size) == 0)
        count(USDT_COUNTER_STREAMED);
    else
        count(USDT_COUNTER_STREAM_FAILED);
    return 0;
}
