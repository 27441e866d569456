/* batch.c - harvest armed topics from a process's own rings, in batches.
 *
 * A record lives first in its process's in-process ring (probes/PROBES.md).
 * Instead of trapping at every record (harvest.c), this program copies the
 * entries an armed topic made since the last harvest, by sequence number,
 * at moments that cost the process little, each time in the process's own
 * context (so bpf_probe_read_user reads its memory):
 *
 *   sched_switch        the thread leaves its CPU: that CPU's shard, and
 *                       maybe one left behind on another CPU (below)
 *   perf timer          a CPU clock tick while it runs (a thread that never
 *                       leaves its CPU): the same shards
 *   sched_process_exit  a thread exits, on kernels that trace it before
 *                       exit_mm() (6.16+; BATCH_EXIT_TRACEPOINT): every shard
 *   sys_enter           exit and exit_group, on older kernels: every shard
 *   signal_deliver      a fatal signal or SIGKILL: every shard
 *
 * A shard is written only by threads running on its CPU, so the harvest at
 * a switch or a tick on that CPU sees no writer running on it; a try-lock
 * per (process, topic, shard) keeps harvests of other CPUs (an exit, a
 * fault, an adoption) from copying an entry twice. One read copies up to
 * BATCH_CHUNK consecutive entries into a chunk message; an entry counts if
 * its copy carries the sequence expected and the shard's head, read again
 * after the copy, shows its slot was not reserved again meanwhile. An index
 * whose slot was rewritten before a harvest reached it is counted
 * overwritten, so streamed + overwritten + refused = what the topic
 * produced since armed. An entry still being written (a writer preempted
 * in its RECORD) stops its shard's harvest until the next one, except at a
 * final harvest.
 *
 * Shards left behind. A walk of a CPU's shard may leave entries there (out
 * of steps, the stream full, an entry still being written, a topic armed
 * from its first record after the process left that CPU); if the process
 * then runs only elsewhere, no harvest of that CPU comes back for them.
 * So the process's target keeps, per shard slot, when a walk last left
 * entries there (`left`, 0 once emptied); a switch or tick harvest looks at
 * one other slot a walk (rotating) and, if its CPU has not harvested it
 * for BATCH_LEFT_NS, walks it too ("adopts" it, under the same try-lock,
 * racing a writer there as an exit walk does). With N CPUs a given slot
 * is looked at once every N-1 walks (on two: every walk). The controller
 * marks every slot at arm time and discovery when it arms a topic, so the
 * first harvests adopt every other shard once.
 *
 * Topics in turn. A walk has a fixed number of steps (BATCH_STEPS x
 * BATCH_CALLS). A switch or tick walk begins at the topic after the one
 * the process's last walk ran out in (`turn` in its target), wrapping
 * around, so a flooding topic cannot keep every walk while the small
 * rings of the topics after it wrap. A final walk begins at the first.
 *
 * Maps, and who reads them:
 *   targets       tgid -> armed topic ids, and     written by the controller;
 *                 per slot when entries were left  topics found later added
 *                                                  here; dropped at exec
 *   armed_names   names the spec arms              the controller
 *   generation    [0]: bumped with armed_names     the controller
 *   cursors       (tgid, topic) -> next index per  written by the controller
 *                 shard, locks, loss counts        at arm time; read by it
 *   counters      per-CPU BATCH_COUNT_*            controller: loss check
 *   stream_rings  one BPF ring buffer per CPU      kernel/batch_stream.py
 *   stream_config [0]: bytes pending before a wakeup   the controller
 *   walks, walk_raw, walk_perf: a walk's state across tail calls
 *   layout_*      never written: carry the message layouts to Python
 *
 * Compile-time switches (-D): BATCH_CPUS (a power of two >= the possible
 * CPUs), BATCH_STRING_MAX, BATCH_EXIT_TRACEPOINT, BATCH_LEFT_NS.
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include <linux/signal.h>
#include "batch.h"

#define BATCH_STEPS   4         /* chunks or shard openings per program run */
#define BATCH_CALLS   30        /* tail calls (the kernel allows 33) */
/* A final walk (exit, fatal signal) keeps its last runs for counting: a
 * shard it opens then is counted lost (refused) instead of copied, so a
 * walk that spent its steps copying one full ring still reaches the other
 * shards and topics, and streamed + lost = produced stays exact. */
#define BATCH_FINAL_RESERVE 8
#define SHARD_ENTRIES RECORDER_SHARD_HEADER
#define BATCH_CHUNK_STRINGS 16   /* %s arguments sent per chunk */
/* A shard its own CPU left entries in and has not harvested again for
 * this long is adopted by the process's harvests on other CPUs. Below the
 * controller's reorder margin (30 ms, decode/reorder.py), so an adopted
 * record still leaves in timestamp order, but only while the process
 * keeps running on another CPU: adoption waits for its next switch or
 * tick there (a process that moves, then blocks 100 ms, has them adopted
 * 100+ ms late, counted late), and with N CPUs for up to N-1 walks of the
 * rotation (adopt()). Above the 1 ms tick: a CPU that still runs the
 * process harvests its own shard. */
#ifndef BATCH_LEFT_NS
#define BATCH_LEFT_NS 10000000
#endif
#define ENTRY_SIZE    sizeof(struct recorder_record)
#define FATAL_SIGNALS ((1u << SIGSEGV) | (1u << SIGBUS) | (1u << SIGILL) \
                       | (1u << SIGFPE) | (1u << SIGABRT) | (1u << SIGTRAP) \
                       | (1u << SIGSYS))

BPF_HASH(targets, __u32, struct batch_target, 16384);
BPF_HASH(cursors, struct cursor_key, struct batch_cursor, 65536);
BPF_HASH(armed_names, struct batch_name, __u8, 4096);
BPF_ARRAY(generation, __u32, 1);    /* bumped when armed_names grows */
/* tgid -> 1: the controller read a name we could not (its page is mapped
 * now): the next look goes ahead of its backoff. */
BPF_HASH(look_now, __u32, __u32, 1024);
BPF_PERCPU_ARRAY(blank_cursor, struct batch_cursor, 1);    /* only .topic set */
BPF_PERCPU_ARRAY(counters, __u64, BATCH_COUNT_COUNT);
BPF_RINGBUF_OUTPUT(stream_template, 1);
BPF_ARRAY_OF_MAPS(stream_rings, "stream_template", BATCH_CPUS);
BPF_ARRAY(stream_config, __u64, 1);
BPF_ARRAY(layout_chunk, struct batch_chunk, 1);
BPF_ARRAY(layout_string, struct batch_string, 1);
BPF_ARRAY(layout_topic, struct batch_topic, 1);

/* A walk over the shards of a process's armed topics, kept per CPU across
 * tail calls. Programs that walk do not nest on one CPU: sched_switch runs
 * with interrupts off, and `active` turns away a tick that interrupts an
 * exit or signal walk. */
struct walk {
    __u32 active;
    __u32 tgid;
    __u32 final;        /* the process is ending: take what cannot wait */
    __u32 topic;        /* topics walked before the current one */
    __u32 topics;
    __u32 first;        /* index in the target's ids of the walk's first */
    __u32 turn;         /* where the next non-final walk starts (mark_left) */
    __u32 slot;         /* shard slot open, or next to open */
    __u32 slot_first;
    __u32 slot_end;
    __u32 open;         /* a shard is open: the fields below are valid */
    __u32 mask;
    __u32 calls;
    __u32 topic_id;
    __u64 shard;
    __u64 head;
    __u64 next;
    char comm[16];
    /* %s arguments of the last chunk, sent by the next step */
    __u32 strings;          /* how many are noted */
    __u32 string_topic;
    __u64 string_first;     /* the chunk's first index */
    __u32 string_shard;
    __u32 string_skip;
    __u32 string_used;
    __u32 string_mask;
    __u32 string_entry[BATCH_CHUNK_STRINGS];
    __u32 string_arg[BATCH_CHUNK_STRINGS];
    __u64 string_address[BATCH_CHUNK_STRINGS];
    __u32 chunk_wanted;
    __u32 chunk_skip;
    __u32 chunk_complete;
    __u32 counting;     /* final walk near its budget: count, do not copy */
    /* Which shard slots: every one (`wide`), or this CPU's (`own`) and
     * maybe one another CPU left behind (`adopted`, BATCH_CPUS: none). */
    __u32 wide;
    __u32 own;
    __u32 adopted;
    __u32 at;           /* the slot of the shard open */
    __u64 adopted_mark; /* targets.left[adopted] when adopted */
    __u64 own_mark;     /* targets.left[own] when the walk began */
    __u64 left;         /* slots whose shards this walk left entries in */
    __u64 stuck;        /* ...for a reason the next harvest would share */
};
BPF_PERCPU_ARRAY(walks, struct walk, 1);
BPF_PROG_ARRAY(walk_raw, 1);        /* [0]: raw tracepoints' continuation */
BPF_PROG_ARRAY(walk_perf, 1);       /* [0]: the timer's continuation */

static __always_inline void count(__u32 counter, __u64 amount)
{
    __u64 *value = counters.lookup(&counter);
    if (value)
        __sync_fetch_and_add(value, amount);
}

/* Lost indices of the open shard: counted per process and topic, and per
 * CPU (the stream's account). */
static __always_inline void lose(struct batch_cursor *cursor, __u64 amount,
                                 int refused)
{
    if (!amount)
        return;
    if (refused)
        __sync_fetch_and_add(&cursor->refused, amount);
    else
        __sync_fetch_and_add(&cursor->overwritten, amount);
    count(BATCH_COUNT_LOST, amount);
}

static __always_inline struct batch_cursor *walk_cursor(struct walk *walk)
{
    struct cursor_key key = {.tgid = walk->tgid, .topic_id = walk->topic_id};
    return cursors.lookup(&key);
}

/* The index in the target's ids of the walk's `nth` topic: from `first`,
 * wrapping around after the last. */
static __always_inline __u32 walk_index(struct walk *walk, __u32 nth)
{
    __u32 index = walk->first + nth;
    if (index >= walk->topics)
        index -= walk->topics;
    return index & (BATCH_TOPICS - 1);
}

/* The shard slot of walk step `walk->slot`. */
static __always_inline __u32 walk_slot(struct walk *walk)
{
    __u32 slot = walk->slot;
    if (!walk->wide)
        slot = slot == 0 ? walk->own : walk->adopted;
    return slot & (BATCH_CPUS - 1);
}

/* The open shard keeps entries this walk did not take: `stuck` when the
 * reason would stop the next harvest too (a lock held, a page unreadable,
 * an entry still being written); not when this walk ran out of room. */
static __always_inline void leave(struct walk *walk, int stuck)
{
    __u64 bit = 1ull << (walk->at & (BATCH_CPUS - 1));
    walk->left |= bit;
    if (stuck)
        walk->stuck |= bit;
}

static __always_inline void close_shard(struct walk *walk,
                                        struct batch_cursor *cursor)
{
    __u32 slot = walk->at & (BATCH_CPUS - 1);
    cursor->next[slot] = walk->next;
    __sync_lock_test_and_set(&cursor->busy[slot], 0);
    walk->open = 0;
    walk->slot++;
}

/* Opens shard `walk->slot` of the current topic: takes its lock, reads its
 * head, counts what was overwritten before this harvest got there. */
static __always_inline void open_shard(struct walk *walk)
{
    __u32 slot = walk_slot(walk);
    walk->at = slot;
    struct batch_cursor *cursor = walk_cursor(walk);
    if (!cursor) {
        walk->slot = walk->slot_end;
        return;
    }
    __u64 shard = 0;
    if (bpf_probe_read_user(&shard, sizeof(shard),
                            (void *)(cursor->topic
                                     + offsetof(struct recorder_topic, shards)
                                     + slot * sizeof(__u64)))) {
        leave(walk, 1);
        walk->slot++;
        return;
    }
    if (!shard) {                       /* no record on that CPU yet */
        walk->slot++;
        return;
    }
    if (__sync_val_compare_and_swap(&cursor->busy[slot], 0, 1) != 0) {
        count(BATCH_COUNT_BUSY, 1);     /* another CPU harvests it now */
        leave(walk, 1);
        walk->slot++;
        return;
    }
    struct { __u64 head; __u32 mask; __u32 keep; } header = {};
    if (bpf_probe_read_user(&header, sizeof(header), (void *)shard)) {
        __sync_lock_test_and_set(&cursor->busy[slot], 0);
        leave(walk, 1);
        walk->slot++;
        return;
    }
    __u64 next = cursor->next[slot];
    __u64 capacity = (__u64)header.mask + 1;
    if (header.head > next + capacity) {     /* wrapped past the cursor */
        lose(cursor, header.head - capacity - next, 0);
        next = header.head - capacity;
    }
    walk->shard = shard;
    walk->head = header.head;
    walk->mask = header.mask;
    walk->next = next;
    walk->open = 1;
}

/* Notes up to BATCH_CHUNK_STRINGS %s arguments of the chunk's entries
 * [skip, used), for send_strings in the next step. Counts and bounds go
 * through memory: registers would carry what each comparison taught the
 * verifier, and it would follow every combination (a ring reservation in
 * this loop, or a register count, costs it ~100,000 instructions). */
static __always_inline void note_strings(struct walk *walk,
                                         struct batch_chunk *chunk,
                                         __u32 skip, __u32 used)
{
    walk->strings = 0;
    walk->string_skip = skip;
    walk->string_used = used;
    walk->string_topic = chunk->topic_id;
    walk->string_first = chunk->first;
    walk->string_shard = chunk->shard;
    for (__u32 i = 0; i < BATCH_CHUNK; i++) {
        struct recorder_record *entry = &chunk->entries[i];
        __u32 types = entry->arg_types;
        __u32 nargs = entry->nargs;
        if (nargs > RECORDER_MAX_ARGS)
            nargs = RECORDER_MAX_ARGS;
        __u32 mask = types & ~(types << 1) & 0xaaaaaau & ((1u << (2 * nargs)) - 1);
        if (i >= *(volatile __u32 *)&walk->string_used
            || i < *(volatile __u32 *)&walk->string_skip)
            mask = 0;
        walk->string_mask = mask;
        if (!mask)
            continue;
#pragma unroll
        for (__u32 arg = 0; arg < RECORDER_MAX_ARGS; arg++) {
            if (!(*(volatile __u32 *)&walk->string_mask & (2u << (2 * arg))))
                continue;
            __u32 noted = *(volatile __u32 *)&walk->strings;
            if (noted >= BATCH_CHUNK_STRINGS)
                break;
            walk->string_entry[noted & (BATCH_CHUNK_STRINGS - 1)] = i;
            walk->string_arg[noted & (BATCH_CHUNK_STRINGS - 1)] = arg;
            walk->string_address[noted & (BATCH_CHUNK_STRINGS - 1)] = entry->args[arg];
            walk->strings = noted + 1;
        }
    }
}

/* Sends the strings note_strings noted, after their chunk. */
static __always_inline void send_strings(struct walk *walk, void *ring)
{
    for (__u32 s = 0; s < BATCH_CHUNK_STRINGS; s++) {
        if (s >= *(volatile __u32 *)&walk->strings)
            break;
        struct batch_string *out = ring ? bpf_ringbuf_reserve(ring, sizeof(*out), 0) : 0;
        if (!out) {
            count(BATCH_COUNT_STRINGS_LOST, 1);
            continue;
        }
        out->kind = BATCH_MSG_STRING;
        out->pid = walk->tgid;
        out->topic_id = walk->string_topic;
        out->shard = walk->string_shard;
        out->index = walk->string_first + walk->string_entry[s];
        out->arg = walk->string_arg[s];
        out->length = bpf_probe_read_user_str(out->text, sizeof(out->text),
                                              (void *)walk->string_address[s]);
        bpf_ringbuf_submit(out, BPF_RB_NO_WAKEUP);
    }
    walk->strings = 0;
}

/* Copies the next chunk of the open shard; returns 0 to go on, 1 when the
 * stream is full (the walk stops: the process's ring holds the rest). */
static __always_inline int copy_chunk(struct walk *walk, void *ring)
{
    struct batch_cursor *cursor = walk_cursor(walk);
    if (!cursor) {
        walk->open = 0;
        walk->slot = walk->slot_end;
        return 0;
    }
    __u64 next = walk->next;
    if (next >= walk->head) {
        close_shard(walk, cursor);
        return 0;
    }
    __u64 capacity = (__u64)walk->mask + 1;
    __u64 wanted = walk->head - next;
    __u64 contiguous = capacity - (next & walk->mask);  /* up to the ring's end */
    if (wanted > contiguous)
        wanted = contiguous;
    if (wanted > BATCH_CHUNK)
        wanted = BATCH_CHUNK;
    struct batch_chunk *out = ring ? bpf_ringbuf_reserve(ring, sizeof(*out), 0) : 0;
    if (!out) {
        count(BATCH_COUNT_FULL, 1);
        if (walk->final) {          /* no later harvest: count them lost */
            lose(cursor, walk->head - next, 1);
            walk->next = walk->head;
            close_shard(walk, cursor);
            return 0;
        }
        leave(walk, 0);
        close_shard(walk, cursor);
        return 1;
    }
    __u32 size = (__u32)wanted * ENTRY_SIZE;
    if (size > sizeof(out->entries))
        size = sizeof(out->entries);
    __u64 address = walk->shard + SHARD_ENTRIES + (next & walk->mask) * ENTRY_SIZE;
    if (size == 0 || bpf_probe_read_user(out->entries, size, (void *)address)) {
        bpf_ringbuf_discard(out, BPF_RB_NO_WAKEUP);
        if (walk->final) {
            lose(cursor, wanted, 0);
            walk->next = next + wanted;
        } else {
            leave(walk, 1);               /* a page not readable now: later */
            close_shard(walk, cursor);
        }
        return 0;
    }
    /* Entries whose slot was reserved again since the copy (index j is
     * rewritten once head passes j + capacity) are lost... */
    __u64 head = walk->head;
    bpf_probe_read_user(&head, sizeof(head), (void *)walk->shard);
    __u32 skip = 0;
    if (head > next + capacity) {
        __u64 rewritten = head - capacity - next;
        skip = rewritten > wanted ? (__u32)wanted : (__u32)rewritten;
    }
    /* ...the others count up to the first without the sequence expected
     * in its copy: one still being written. */
    walk->chunk_wanted = wanted;        /* through memory: see note_strings */
    walk->chunk_skip = skip;
    walk->chunk_complete = skip;
    for (__u32 i = 0; i < BATCH_CHUNK; i++) {
        if (i >= *(volatile __u32 *)&walk->chunk_wanted)
            break;
        if (i < *(volatile __u32 *)&walk->chunk_skip)
            continue;
        if (out->entries[i].sequence != next + i + 1)
            break;
        walk->chunk_complete = i + 1;
    }
    __u32 complete = *(volatile __u32 *)&walk->chunk_complete;
    lose(cursor, skip, 0);
    __u32 valid = complete - skip;
    if (complete < wanted && walk->final)
        lose(cursor, 1, 0);     /* never to be finished: skip it too */
    if (valid == 0) {
        bpf_ringbuf_discard(out, BPF_RB_NO_WAKEUP);
    } else {
        out->kind = BATCH_MSG_CHUNK;
        out->pid = walk->tgid;
        out->topic_id = walk->topic_id;
        out->count = complete;
        out->skip = skip;
        out->shard = walk->at;
        out->reserved = 0;
        out->first = next;
        __builtin_memcpy(out->comm, walk->comm, sizeof(out->comm));
        __u32 zero = 0;
        __u64 *wake = stream_config.lookup(&zero);
        __u64 pending = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
        __u64 flags = wake && pending >= *wake ? BPF_RB_FORCE_WAKEUP
                                               : BPF_RB_NO_WAKEUP;
        note_strings(walk, out, skip, complete);
        bpf_ringbuf_submit(out, flags);
        __sync_fetch_and_add(&cursor->streamed, valid);
        count(BATCH_COUNT_STREAMED, valid);
        count(BATCH_COUNT_CHUNKS, 1);
    }
    if (complete < wanted) {
        if (walk->final) {
            walk->next = next + complete + 1;
        } else {                /* an entry still being written: next time */
            walk->next = next + complete;
            leave(walk, 1);
            close_shard(walk, cursor);
        }
        return 0;
    }
    walk->next = next + complete;
    return 0;
}

/* A final walk out of copying budget: what the open shard holds still is
 * counted refused (there is no later harvest), and it is closed. */
static __always_inline void count_rest(struct walk *walk)
{
    struct batch_cursor *cursor = walk_cursor(walk);
    if (!cursor) {
        walk->open = 0;
        walk->slot = walk->slot_end;
        return;
    }
    if (walk->head > walk->next)
        lose(cursor, walk->head - walk->next, 1);
    walk->next = walk->head;
    close_shard(walk, cursor);
}

/* Up to BATCH_STEPS steps; returns 1 when the walk is over. */
static __always_inline int walk_steps(struct walk *walk)
{
    __u32 cpu = bpf_get_smp_processor_id();
    void *ring = stream_rings.lookup(&cpu);
    if (walk->final && walk->calls >= BATCH_CALLS - BATCH_FINAL_RESERVE)
        walk->counting = 1;
    for (int step = 0; step < BATCH_STEPS; step++) {
        if (walk->strings) {
            send_strings(walk, ring);
            continue;
        }
        if (walk->open && walk->counting) {
            count_rest(walk);
            continue;
        }
        if (walk->open) {
            if (copy_chunk(walk, ring))
                return 1;
            continue;
        }
        if (walk->slot < walk->slot_end) {
            open_shard(walk);
            continue;
        }
        walk->topic++;
        if (walk->topic >= walk->topics || walk->topic >= BATCH_TOPICS)
            return 1;
        struct batch_target *target = targets.lookup(&walk->tgid);
        if (!target)
            return 1;
        walk->topic_id = target->ids[walk_index(walk, walk->topic)];
        walk->slot = walk->slot_first;
    }
    return 0;
}

#define BATCH_DISCOVER 16        /* topics looked at per harvest */

#define BATCH_RETRY_NS 4000000  /* first look again at an unreadable name */
#define BATCH_RETRIES  11       /* then twice as late each time: ~8 s */

/* Tells the controller the name of a topic armed here (BATCH_MSG_TOPIC),
 * or where the name is of one whose name we could not read
 * (BATCH_MSG_UNNAMED, `address` the name's, `name` empty). */
static __always_inline void announce(__u32 kind, __u32 tgid, __u64 address,
                                     __u32 id, __u32 size, struct batch_name *name)
{
    __u32 cpu = bpf_get_smp_processor_id();
    void *ring = stream_rings.lookup(&cpu);
    struct batch_topic *out = ring ? bpf_ringbuf_reserve(ring, sizeof(*out), 0) : 0;
    if (!out)
        return;
    out->kind = kind;
    out->pid = tgid;
    out->topic_id = id;
    out->size = size;
    out->address = address;
    __builtin_memcpy(out->name, name->name, sizeof(out->name));
    bpf_ringbuf_submit(out, kind == BATCH_MSG_UNNAMED ? BPF_RB_FORCE_WAKEUP
                                                      : BPF_RB_NO_WAKEUP);
}

/* Arms the topics registered since the process was armed (id >= base)
 * whose names the spec arms: a library loaded later, a Python topic. They
 * are harvested from their first record. Runs only when the registry's
 * topic count or the armed names changed since the last look.
 *
 * A name we cannot read (its page not mapped in this process: a fork that
 * never touched the read-only page holding it, as fork copies no page
 * table of a file mapping; bpf_probe_read_user cannot fault it in) leaves
 * the look incomplete: the controller is told where it is, reads it
 * through /proc/PID/mem (which maps the page) and publishes the name if
 * the spec arms it, and we look again after a backoff, or at once when
 * the controller says it read it (look_now). A name still
 * unreadable after BATCH_RETRIES looks is given up and counted
 * (BATCH_COUNT_UNNAMED): a process cannot make us look forever. */
static __always_inline void discover(__u32 tgid, struct batch_target *target)
{
    __u32 zero = 0;
    __u32 *latest = generation.lookup(&zero);
    __u32 now = latest ? *latest : 0;
    struct { __u64 topics; __u32 topic_count; } head = {};
    if (bpf_probe_read_user(&head, 12, (void *)(target->registry
                                                + offsetof(struct recorder_registry,
                                                           topics))))
        return;
    if (head.topic_count == target->known && now == target->generation)
        return;
    __u64 time = bpf_ktime_get_ns();
    if (time < target->retry_ns) {
        __u32 key = tgid;
        if (!look_now.lookup(&key))
            return;
        look_now.delete(&key);
    }
    if (__sync_val_compare_and_swap(&target->lock, 0, 1) != 0)
        return;
    struct batch_cursor *blank = blank_cursor.lookup(&zero);
    /* A look covers BATCH_DISCOVER topics a harvest: a longer list is
     * looked at over several harvests, each going on where the last one
     * stopped. A look starts at the head; topics registered meanwhile are
     * ahead of it, and the next look, as `known` is the count at its
     * start, finds them. */
    __u64 topic = target->resume;
    if (!topic) {
        topic = head.topics;
        target->look_known = head.topic_count;
        target->look_generation = now;
        /* "a name was unreadable in this look", kept in the map value, not
         * a local: a local splits the verifier's states (3x the
         * instructions). */
        target->unread_now = 0;
    }
    int complete = 0;
    target->armed_now = 0;
    for (int i = 0; i < BATCH_DISCOVER; i++) {
        if (!topic) {
            complete = 1;
            break;
        }
        struct { __s64 trace; __u32 id; __u32 size; __u64 name; } found = {};
        if (bpf_probe_read_user(&found, sizeof(found), (void *)topic))
            break;
        if (found.id < target->base) {     /* the controller armed those */
            complete = 1;
            break;
        }
        struct cursor_key key = {.tgid = tgid, .topic_id = found.id};
        if (!cursors.lookup(&key)) {
            struct batch_name name = {};
            __u32 used = target->topics;
            if (bpf_probe_read_user_str(name.name, sizeof(name.name),
                                        (void *)found.name) < 0) {
                target->unread_now = 1;
                name.name[0] = 0;
                if (target->unread < BATCH_RETRIES)
                    announce(BATCH_MSG_UNNAMED, tgid, found.name, found.id,
                             found.size, &name);
            } else if (blank && used < BATCH_TOPICS && armed_names.lookup(&name)) {
                blank->topic = topic;
                if (cursors.insert(&key, blank) == 0) {
                    target->ids[used & (BATCH_TOPICS - 1)] = found.id;
                    __sync_fetch_and_add(&target->topics, 1);
                    target->armed_now = 1;
                    announce(BATCH_MSG_TOPIC, tgid, topic, found.id, found.size, &name);
                }
            } else if (used >= BATCH_TOPICS && !target->capped
                       && armed_names.lookup(&name)) {
                target->capped = 1;     /* said once, not at every look */
                count(BATCH_COUNT_CAPPED, 1);
            }
        }
        if (bpf_probe_read_user(&topic, sizeof(topic),
                                (void *)(topic + offsetof(struct recorder_topic, next))))
            break;
    }
    complete |= !topic;         /* the list ended with the last step */
    target->resume = complete ? 0 : topic;
    if (complete && target->unread_now && target->unread < BATCH_RETRIES) {
        target->retry_ns = time + ((__u64)BATCH_RETRY_NS << (target->unread & 15));
        target->unread++;
    } else if (complete) {
        if (target->unread_now)
            count(BATCH_COUNT_UNNAMED, 1);
        target->known = target->look_known;
        target->generation = target->look_generation;
        target->unread = 0;
    }
    /* A topic armed from its first record may hold entries in the shards
     * of CPUs the process has left: every slot is adopted once. The mark
     * (time 0: adopt at once) differs from every earlier one, as `topics`
     * only grows: a walk that began before this look and clears the mark
     * it read (mark_left) cannot clear this one. */
    if (target->armed_now)
        for (__u32 slot = 0; slot < BATCH_CPUS; slot++)
            target->left[slot] = ((__u64)target->topics << 1) | 1;
    __sync_lock_test_and_set(&target->lock, 0);
}

/* Picks, for a walk of this CPU's shard, the slot of another CPU that
 * left entries in it and has not come back for BATCH_LEFT_NS: the process
 * has moved, and only its harvests elsewhere can take them before it
 * exits. One slot is looked at a walk, the next one at the next walk: with
 * N CPUs a given slot once every N-1 walks (on two CPUs: always the other
 * one; on 64, ~63 ms of ticks). Each look more would have the verifier
 * follow the rest of the program once more (~7,000 instructions), and a
 * harvest on a 64-CPU machine should not read 64 words. */
static __always_inline void adopt(struct walk *walk, struct batch_target *target)
{
    walk->adopted = BATCH_CPUS;
    __u32 slot = target->scan & (BATCH_CPUS - 1);
    if (slot == walk->own)
        slot = (slot + 1) & (BATCH_CPUS - 1);
    target->scan = slot + 1;            /* racy: any order will do */
    __u64 mark = target->left[slot];
    if (!(mark & 1) || slot == walk->own)
        return;
    if ((__s64)(bpf_ktime_get_ns() - mark) < BATCH_LEFT_NS)
        return;
    walk->adopted = slot;
    walk->adopted_mark = mark;
    count(BATCH_COUNT_ADOPTED, 1);
}

/* After a walk of this CPU's shard: marks the slots it left entries in,
 * and clears what it emptied. One word a slot. A mark is set with a plain
 * store (a mark too many costs one adoption walk); it is cleared, or an
 * adopter moves it, only by a compare-and-swap from the value the walk
 * read before it read the topics: a discovery that armed a topic
 * meanwhile (a topic this walk did not walk) changed that value, and the
 * new topic's entries stay marked. */
static __always_inline void mark_left(struct walk *walk)
{
    __u64 own_bit = 1ull << (walk->own & (BATCH_CPUS - 1));
    /* Nothing to mark (the usual case): spare the lookup. One test of a
     * sum, not three branches: each would be a path more to verify. */
    if (!((walk->left & own_bit) | walk->own_mark | (walk->adopted ^ BATCH_CPUS)))
        return;
    struct batch_target *target = targets.lookup(&walk->tgid);
    if (!target)
        return;
    /* A walk that ran out marks its own slot (walk_end): it gets here. */
    target->turn = walk->turn;
    __u32 own = walk->own & (BATCH_CPUS - 1);
    if (walk->left & own_bit)
        target->left[own] = bpf_ktime_get_ns() | 1;
    else if (target->left[own])
        __sync_val_compare_and_swap(&target->left[own], walk->own_mark, 0);
    if (walk->adopted >= BATCH_CPUS)
        return;
    __u32 other = walk->adopted & (BATCH_CPUS - 1);
    if (!(walk->left & (1ull << other)))
        __sync_val_compare_and_swap(&target->left[other], walk->adopted_mark, 0);
    else if (walk->stuck & (1ull << other))     /* not before BATCH_LEFT_NS */
        __sync_val_compare_and_swap(&target->left[other], walk->adopted_mark,
                                    bpf_ktime_get_ns() | 1);
    /* else it ran out of room there: the next harvest goes on with it */
}

/* Starts a walk of `tgid`'s armed topics: the shard of this CPU, or every
 * shard when `all`. Returns 0 if there is nothing to walk. */
static __always_inline int walk_start(struct walk *walk, __u32 tgid, int all,
                                      int final)
{
    struct batch_target *target = targets.lookup(&tgid);
    if (!target)
        return 0;
    discover(tgid, target);
    if (!target->topics)
        return 0;
    walk->tgid = tgid;
    walk->final = final;
    walk->topic = 0;
    /* A non-final walk starts after the topic the last one ran out in, so
     * a flooding topic cannot keep every walk's steps while the rings of
     * those after it wrap. A final walk takes every topic: from the first. */
    walk->first = 0;
    if (!final && target->turn < target->topics)
        walk->first = target->turn;
    walk->open = 0;
    walk->calls = 0;
    walk->strings = 0;
    walk->counting = 0;
    walk->left = 0;
    walk->stuck = 0;
    walk->wide = all;
    walk->own = bpf_get_smp_processor_id() & (BATCH_CPUS - 1);
    walk->adopted = BATCH_CPUS;
    walk->slot_first = 0;
    if (all) {
        walk->slot_end = BATCH_CPUS;
    } else {
        walk->own_mark = target->left[walk->own & (BATCH_CPUS - 1)];
        adopt(walk, target);
        walk->slot_end = walk->adopted < BATCH_CPUS ? 2 : 1;
    }
    /* The marks before the topics: a discovery elsewhere adds topics, then
     * marks the slots; a walk that missed the topics sees the new marks
     * change under its compare-and-swaps (mark_left). */
    asm volatile("" ::: "memory");
    walk->topics = target->topics;
    walk->topic_id = target->ids[walk->first & (BATCH_TOPICS - 1)];
    walk->slot = walk->slot_first;
    bpf_get_current_comm(walk->comm, sizeof(walk->comm));
    count(BATCH_COUNT_HARVESTS, 1);
    return 1;
}

static __always_inline void walk_end(struct walk *walk)
{
    if (walk->strings) {
        __u32 cpu = bpf_get_smp_processor_id();
        void *ring = stream_rings.lookup(&cpu);
        send_strings(walk, ring);
    }
    if (walk->open) {       /* out of steps and calls: resume next time */
        struct batch_cursor *cursor = walk_cursor(walk);
        if (cursor) {
            if (walk->final) {      /* there is no next time */
                lose(cursor, walk->head - walk->next, 1);
                walk->next = walk->head;
            } else {
                leave(walk, 0);
            }
            close_shard(walk, cursor);
        }
    }
    int unfinished = walk->slot < walk->slot_end || walk->topic + 1 < walk->topics;
    /* Out of steps in a topic: the next walk starts at the one after it
     * (the topic it ran out in comes last then). Done: where this began. */
    walk->turn = unfinished ? walk_index(walk, walk->topic + 1) : walk->first;
    /* A final walk that ended before its last topic's last shard: what
     * those shards held is counted nowhere (the account is short). */
    if (walk->final && unfinished)
        count(BATCH_COUNT_UNFINISHED, 1);
    if (!walk->wide) {
        if (unfinished) {
            walk->left |= 1ull << (walk->own & (BATCH_CPUS - 1));
            if (walk->adopted < BATCH_CPUS)
                walk->left |= 1ull << (walk->adopted & (BATCH_CPUS - 1));
        }
        mark_left(walk);
    }
    walk->active = 0;
}

/* Runs the walk on; tail-calls its continuation until it is over or out
 * of calls (one per program type: a tail call keeps the type). */
static __always_inline void walk_on_raw(struct bpf_raw_tracepoint_args *ctx,
                                        struct walk *walk)
{
    if (!walk_steps(walk) && walk->calls < BATCH_CALLS) {
        walk->calls++;
        walk_raw.call(ctx, 0);      /* returns only if the call failed */
    }
    walk_end(walk);
}

static __always_inline void walk_on_perf(struct bpf_perf_event_data *ctx,
                                         struct walk *walk)
{
    if (!walk_steps(walk) && walk->calls < BATCH_CALLS) {
        walk->calls++;
        walk_perf.call(ctx, 0);
    }
    walk_end(walk);
}

static __always_inline struct walk *claim_walk(void)
{
    __u32 zero = 0;
    struct walk *walk = walks.lookup(&zero);
    if (!walk || walk->active)
        return 0;
    walk->active = 1;
    return walk;
}

static __always_inline int harvest_raw(struct bpf_raw_tracepoint_args *ctx,
                                       __u32 tgid, int all, int final)
{
    if (!targets.lookup(&tgid))
        return 0;
    struct walk *walk = claim_walk();
    if (!walk)
        return 0;
    if (!walk_start(walk, tgid, all, final)) {
        walk->active = 0;
        return 0;
    }
    /* The walk itself lives only in the continuations: compiled and
     * verified twice instead of once per entry point. */
    walk->calls = 1;
    walk_raw.call(ctx, 0);
    walk_end(walk);             /* only if the call failed */
    return 0;
}

int walk_raw_more(struct bpf_raw_tracepoint_args *ctx)
{
    __u32 zero = 0;
    struct walk *walk = walks.lookup(&zero);
    if (walk)
        walk_on_raw(ctx, walk);
    return 0;
}

int walk_perf_more(struct bpf_perf_event_data *ctx)
{
    __u32 zero = 0;
    struct walk *walk = walks.lookup(&zero);
    if (walk)
        walk_on_perf(ctx, walk);
    return 0;
}

/* The thread leaving the CPU is `current` here (prev): its memory is
 * readable, and no writer of this CPU's shard runs. */
RAW_TRACEPOINT_PROBE(sched_switch)
{
    return harvest_raw(ctx, bpf_get_current_pid_tgid() >> 32, 0, 0);
}

/* A CPU clock tick (perf event, per CPU): a thread that never leaves its
 * CPU is harvested here. */
int batch_tick(struct bpf_perf_event_data *ctx)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    struct walk *walk = claim_walk();
    if (!walk)
        return 0;
    if (!walk_start(walk, tgid, 0, 0)) {
        walk->active = 0;
        return 0;
    }
    walk->calls = 1;
    walk_perf.call(ctx, 0);
    walk_end(walk);             /* only if the call failed */
    return 0;
}

#ifdef BATCH_EXIT_TRACEPOINT
/* sched_process_exit runs before exit_mm() since Linux 6.16: the exiting
 * thread's memory is still there. */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    return harvest_raw(ctx, bpf_get_current_pid_tgid() >> 32, 1, 1);
}
#else
/* Older kernels trace the exit after exit_mm(): harvest at the exit and
 * exit_group system calls instead (a kill goes through signal_deliver). */
RAW_TRACEPOINT_PROBE(sys_enter)
{
    long id = (long)ctx->args[1];
    if (id != 60 && id != 231)          /* exit, exit_group (x86-64) */
        return 0;
    return harvest_raw(ctx, bpf_get_current_pid_tgid() >> 32, 1, 1);
}
#endif

/* A fatal signal (a fault to its default action) or SIGKILL, delivered in
 * the dying thread's context: the last harvest. Another signal: a harvest
 * of every shard, as the process may stop here for long (SIGSTOP). */
RAW_TRACEPOINT_PROBE(signal_deliver)
{
    int sig = (int)ctx->args[0];
    void *action = (void *)ctx->args[2];       /* struct k_sigaction */
    int final = sig == SIGKILL;
    if (!final && sig > 0 && sig < 32 && ((1u << sig) & FATAL_SIGNALS)) {
        void *handler = (void *)1;
        bpf_probe_read_kernel(&handler, sizeof(handler), action);
        final = handler == SIG_DFL;
    }
#ifdef BATCH_EXIT_TRACEPOINT
    /* The kernel delivers signals under the signal lock, interrupts off:
     * a death's last harvest waits for its exit (above), where the memory
     * is still there and interrupts are on. */
    if (final)
        return 0;
#endif
    return harvest_raw(ctx, bpf_get_current_pid_tgid() >> 32, 1, final);
}

/* A new program: the old rings are gone. */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    targets.delete(&tgid);
    return 0;
}
