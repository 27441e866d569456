/* seed_ring.c - the seed library's recorder_ring.h API, used the way its
 * own ring test uses it (c3d/recorder's ring_test.c): written only against
 * that documented API. Modes:
 *
 *   basic    a named static ring: write, readable, writable, peek, read,
 *            an overflowing write and the reader that catches up
 *   typed    RECORDER_RING_TYPE_DECLARE: a heap ring of ints, with a
 *            read_block that refuses and one that lets the read proceed
 *   threads  N writers of variable-length messages (the message's first
 *            letter gives its length) and one reader: every message read
 *            must be one of the known strings, whole
 *   entries  a ring of the seed's recorder_entry, filled and read back
 *            field by field (the seed's recorders are such rings)
 */
#include "recorder.h"
#include "recorder_ring.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

RECORDER_RING_DECLARE(chars, char, 16)
RECORDER_RING_DEFINE(chars, char, 16);

static void show(const char *what, const char *data, size_t count)
{
    printf("%s %zu '%.*s'\n", what, count, (int)count, data);
}

static int basic_mode(void)
{
    char buffer[64];
    printf("wrote %zu\n", chars_write("hello", 5));
    printf("readable %zu writable %zu\n", chars_readable(), chars_writable());
    printf("peek %c\n", *chars_peek());
    size_t got = chars_read(buffer, 3);
    show("read", buffer, got);
    printf("wrote %zu\n", chars_write("abcdefghijklmnopqrst", 20));
    printf("readable %zu writable %zu\n", chars_readable(), chars_writable());
    got = chars_read(buffer, sizeof(buffer));
    show("read", buffer, got);
    printf("overflow %lu reader %lu writer %lu commit %lu\n",
           (unsigned long)chars.ring.overflow, (unsigned long)chars.ring.reader,
           (unsigned long)chars.ring.writer, (unsigned long)chars.ring.commit);
    printf("peek %s\n", chars_peek() ? "item" : "NULL");
    return 0;
}

RECORDER_RING_TYPE_DECLARE(int_ring, int)

static unsigned refusals;

static bool refuse(int_ring *ring, ringidx_t from, ringidx_t to)
{
    (void)ring; (void)from; (void)to;
    refusals++;
    return false;
}

static int typed_mode(void)
{
    int_ring *ring = int_ring_new(8);
    int values[5] = { 2, 3, 5, 7, 11 }, out[8] = { 0 };
    ringidx_t at = 99, reader = 0;
    size_t wrote = int_ring_write(ring, values, 5, NULL, NULL, &at);
    printf("wrote %zu at %lu\n", wrote, (unsigned long)at);
    /* Asking for 8 with 5 there: the block function refuses, 5 come. */
    size_t got = int_ring_read(ring, out, 8, &reader, refuse, NULL);
    printf("read %zu:", got);
    for (size_t i = 0; i < got; i++)
        printf(" %d", out[i]);
    printf(" refusals %u private reader %lu ring reader %lu\n", refusals,
           (unsigned long)reader, (unsigned long)ring->ring.reader);
    /* The private reader's progress, handed to the ring as ring_test.c
     * does; then 3 of 8 slots are taken: a write_block that refuses keeps
     * 5 of 7. */
    ring->ring.reader = reader;
    int_ring_write(ring, values, 3, NULL, NULL, NULL);
    printf("writable %zu\n", int_ring_writable(ring));
    int seven[7] = { 1, 2, 3, 4, 5, 6, 7 };
    wrote = int_ring_write(ring, seven, 7, refuse, NULL, NULL);
    printf("wrote %zu with a refusing write_block, refusals %u\n", wrote,
           refusals);
    printf("readable %zu\n", int_ring_readable(ring));
    int_ring_delete(ring);
    return 0;
}

/* ------------------------------------------------------------------------ */

RECORDER_RING_DECLARE(buffer, char, 1024)
RECORDER_RING_DEFINE(buffer, char, 1024);

static const char *messages[] = {
    "All your bases", "Be yourself", "Can't you read?", "Des cubes?",
    "Extraordinary claims require extraordinary evidence", "Fool!",
    "Gastoooon!", "History repeats", "I see no reason", "Jealousy",
};
#define MESSAGES (sizeof(messages) / sizeof(*messages))

static unsigned stop, written, writers_done;

/* Waits until the reader has made room for [from, to). */
static bool wait_for_room(recorder_ring_t *ring, ringidx_t from, ringidx_t to)
{
    (void)from;
    while ((intptr_t)(to - __atomic_load_n(&ring->reader, __ATOMIC_ACQUIRE))
           > (intptr_t)ring->size)
        sched_yield();
    return true;
}

/* Waits until earlier writers have published up to our start. */
static bool wait_for_commit(recorder_ring_t *ring, ringidx_t commit,
                            ringidx_t first)
{
    (void)commit;
    while (__atomic_load_n(&ring->commit, __ATOMIC_ACQUIRE) != first)
        sched_yield();
    return true;
}

/* Waits until [from, to) is committed. */
static bool wait_for_data(recorder_ring_t *ring, ringidx_t from, ringidx_t to)
{
    (void)from;
    while ((intptr_t)(__atomic_load_n(&ring->commit, __ATOMIC_ACQUIRE) - to) < 0)
        sched_yield();
    return true;
}

static void *writer(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
        const char *message = messages[rand_r(&seed) % MESSAGES];
        buffer_block_write(message, strlen(message), wait_for_room,
                           wait_for_commit, NULL);
        recorder_ring_fetch_add(written, 1);
    }
    recorder_ring_fetch_add(writers_done, 1);
    return NULL;
}

static int threads_mode(int count, unsigned total)
{
    pthread_t threads[16];
    unsigned read = 0, garbled = 0;
    ringidx_t reader = 0;
    if (count > 16)
        count = 16;
    for (int i = 0; i < count; i++)
        pthread_create(&threads[i], NULL, writer, (void *)(uintptr_t)(i + 1));
    for (;;) {
        char text[128];
        if (read >= total)
            __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
        if (read >= total && __atomic_load_n(&writers_done, __ATOMIC_ACQUIRE)
                             == (unsigned)count
            && buffer_readable() == 0)
            break;
        if (!buffer_readable()) {
            sched_yield();
            continue;
        }
        size_t got = buffer_block_read(text, 1, &reader, wait_for_data, NULL);
        unsigned index = (unsigned)(text[0] - 'A');
        if (got != 1 || index >= MESSAGES) {
            /* Lost the message boundaries: writers would wait forever. */
            printf("garbled at %lu: '%c'\n", (unsigned long)reader, text[0]);
            exit(1);
        }
        size_t length = strlen(messages[index]);
        got += buffer_block_read(text + 1, length - 1, &reader, wait_for_data,
                                 NULL);
        buffer.ring.reader = reader;
        if (got != length || memcmp(text, messages[index], length) != 0)
            garbled++;
        read++;
    }
    for (int i = 0; i < count; i++)
        pthread_join(threads[i], NULL);
    printf("read %s written %s garbled %u overflow %lu\n",
           read == written ? "all" : "some", read >= total ? "enough" : "few",
           garbled, (unsigned long)buffer.ring.overflow);
    return garbled != 0;
}

/* ------------------------------------------------------------------------ */

RECORDER_RING_TYPE_DECLARE(entry_ring, recorder_entry);

static int entries_mode(void)
{
    entry_ring *ring = entry_ring_new(4);
    recorder_entry in[3], out[3];
    for (unsigned i = 0; i < 3; i++) {
        recorder_entry *entry = &in[i];
        entry->format = "value %d, %d, %d, %d";
        entry->order = 100 + i;
        entry->timestamp = recorder_tick();
        entry->where = __FILE__;
        for (unsigned a = 0; a < 4; a++)
            entry->args[a] = 10 * i + a;
    }
    entry_ring_write(ring, in, 3, NULL, NULL, NULL);
    size_t got = entry_ring_read(ring, out, 3, NULL, NULL, NULL);
    printf("entry size %zu read %zu\n", sizeof(recorder_entry), got);
    for (size_t i = 0; i < got; i++) {
        char message[64];
        snprintf(message, sizeof(message), out[i].format, (int)out[i].args[0],
                 (int)out[i].args[1], (int)out[i].args[2],
                 (int)out[i].args[3]);
        printf("order %lu %s at %s, stamped %s\n", (unsigned long)out[i].order,
               message, out[i].where,
               out[i].timestamp == in[i].timestamp ? "as written" : "wrongly");
    }
    entry_ring_delete(ring);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "entries") == 0)
        return entries_mode();
    if (argc > 1 && strcmp(argv[1], "basic") == 0)
        return basic_mode();
    if (argc > 1 && strcmp(argv[1], "typed") == 0)
        return typed_mode();
    if (argc > 3 && strcmp(argv[1], "threads") == 0)
        return threads_mode(atoi(argv[2]), (unsigned)atoi(argv[3]));
    fprintf(stderr, "usage: seed_ring basic|typed|entries|threads WRITERS MESSAGES\n");
    return 2;
}
