/* ring.c - the seed library's general-purpose ring (recorder_ring.h).
 *
 * Writers reserve a range with a compare-exchange on `writer`, copy their
 * items in (at most two memcpy: the range may wrap), then publish by moving
 * `commit` from the start of their range to its end, in reservation order.
 * Readers copy from `reader` up to `commit` and move `reader` with a
 * compare-exchange, so several readers never hand out one item twice. A
 * reader that finds writers a whole ring ahead skips what they overwrote.
 */
#define _GNU_SOURCE
#include "recorder_ring.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define LOAD(x)      __atomic_load_n(&(x), __ATOMIC_ACQUIRE)

static char *items(recorder_ring_p ring)
{
    return (char *)(ring + 1);
}

/* Copies `count` items between `buffer` and the ring from index `at`. */
static void copy_items(recorder_ring_p ring, ringidx_t at, char *buffer,
                       size_t count, int into_ring)
{
    const size_t size = ring->size, item_size = ring->item_size;
    while (count) {
        size_t slot = at % size;
        size_t run = size - slot < count ? size - slot : count;
        char *in_ring = items(ring) + slot * item_size;
        if (into_ring)
            memcpy(in_ring, buffer, run * item_size);
        else
            memcpy(buffer, in_ring, run * item_size);
        buffer += run * item_size;
        at += run;
        count -= run;
    }
}

recorder_ring_p recorder_ring_init(recorder_ring_p ring, size_t size,
                                   size_t item_size)
{
    *ring = (recorder_ring_t) { .size = size, .item_size = item_size };
    return ring;
}

recorder_ring_p recorder_ring_new(size_t size, size_t item_size)
{
    void *memory = NULL;
    if (!size || !item_size || size > (SIZE_MAX - sizeof(recorder_ring_t))
                                          / item_size)
        return NULL;
    if (posix_memalign(&memory, _Alignof(recorder_ring_t),
                       sizeof(recorder_ring_t) + size * item_size) != 0)
        return NULL;
    return recorder_ring_init(memory, size, item_size);
}

void recorder_ring_delete(recorder_ring_p ring)
{
    free(ring);
}

size_t recorder_ring_readable(recorder_ring_p ring, ringidx_t *reader)
{
    ringidx_t from = LOAD(*(reader ? reader : &ring->reader));
    intptr_t readable = (intptr_t)(LOAD(ring->commit) - from);
    if (readable < 0)
        return 0;
    return (size_t)readable < ring->size ? (size_t)readable : ring->size;
}

size_t recorder_ring_writable(recorder_ring_p ring)
{
    intptr_t used = (intptr_t)(LOAD(ring->writer) - LOAD(ring->reader));
    if (used < 0)
        used = 0;
    return (size_t)used < ring->size ? ring->size - (size_t)used : 0;
}

/* The oldest index still intact when writers have reserved indices below
 * `writer`: index i shares its slot with i + size, so those below
 * writer - size are overwritten or being overwritten. */
static ringidx_t oldest_intact(recorder_ring_p ring, ringidx_t writer)
{
    return writer - ring->size;
}

static int overwritten(recorder_ring_p ring, ringidx_t writer, ringidx_t from)
{
    return (intptr_t)(writer - from) > (intptr_t)ring->size;
}

static void skip_to(recorder_ring_p ring, ringidx_t *reader, ringidx_t from,
                    ringidx_t to)
{
    if (recorder_ring_compare_exchange(*reader, from, to))
        recorder_ring_fetch_add(ring->overflow, to - from);
}

void *recorder_ring_peek(recorder_ring_p ring)
{
    ringidx_t reader = LOAD(ring->reader), writer = LOAD(ring->writer);
    if (overwritten(ring, writer, reader)) {
        skip_to(ring, &ring->reader, reader, oldest_intact(ring, writer));
        reader = LOAD(ring->reader);
    }
    if ((intptr_t)(LOAD(ring->commit) - reader) <= 0)
        return NULL;
    return items(ring) + reader % ring->size * ring->item_size;
}

size_t recorder_ring_read(recorder_ring_p ring, void *data, size_t count,
                          ringidx_t *reader, recorder_ring_block_fn block,
                          recorder_ring_block_fn overflow)
{
    if (!reader)
        reader = &ring->reader;
    for (;;) {
        ringidx_t from = LOAD(*reader);
        ringidx_t writer = LOAD(ring->writer);
        if (overwritten(ring, writer, from)
            && !(overflow && overflow(ring, from, oldest_intact(ring, writer)))) {
            skip_to(ring, reader, from, oldest_intact(ring, writer));
            continue;
        }
        ringidx_t commit = LOAD(ring->commit);
        size_t available = (intptr_t)(commit - from) > 0 ? commit - from : 0;
        if (count > available && block && block(ring, from, from + count)) {
            commit = LOAD(ring->commit);
            available = (intptr_t)(commit - from) > 0 ? commit - from : 0;
        }
        size_t taken = count < available ? count : available;
        if (taken > ring->size)
            taken = ring->size;
        copy_items(ring, from, data, taken, 0);
        /* A writer that lapped us while we copied may have torn the copy. */
        if (overwritten(ring, LOAD(ring->writer), from))
            continue;
        if (recorder_ring_compare_exchange(*reader, from, from + taken))
            return taken;
    }
}

size_t recorder_ring_write(recorder_ring_p ring, const void *data,
                           size_t count, recorder_ring_block_fn write_block,
                           recorder_ring_block_fn commit_block,
                           ringidx_t *writer)
{
    ringidx_t first;
    size_t taken;
    do {
        first = LOAD(ring->writer);
        intptr_t used = (intptr_t)(first - LOAD(ring->reader));
        size_t room = used < 0 ? ring->size
                    : (size_t)used < ring->size ? ring->size - (size_t)used : 0;
        taken = count;
        if (count > room && write_block
            && !write_block(ring, first, first + count))
            taken = room;
    } while (!recorder_ring_compare_exchange(ring->writer, first,
                                             first + taken));
    if (writer)
        *writer = first;

    /* More than a ring's worth: only the last `size` items survive. */
    const char *source = data;
    size_t skipped = taken > ring->size ? taken - ring->size : 0;
    copy_items(ring, first + skipped, (char *)source + skipped * ring->item_size,
               taken - skipped, 1);

    ringidx_t expected = first;
    while (!recorder_ring_compare_exchange(ring->commit, expected,
                                           first + taken)) {
        if (commit_block) {
            if (!commit_block(ring, expected, first)) {
                recorder_ring_fetch_add(ring->commit, taken);
                break;
            }
        } else {
            sched_yield();      /* an earlier writer is still copying */
        }
        expected = first;
    }
    return taken;
}
