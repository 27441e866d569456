/* recorder_ring.h - the seed library's general-purpose ring buffer API.
 *
 *   RECORDER_RING_DECLARE(chars, char, 512);      // in a header
 *   RECORDER_RING_DEFINE(chars, char, 512);       // in one .c file
 *   chars_write("hello", 5);  chars_read(buffer, 5);
 *
 * A ring of `size` items of `item_size` bytes with many writers and
 * (usually) one reader, without locks. Indices only grow; item i lives in
 * slot i % size:
 *   reader    next item to read (or the caller's own `*reader` index)
 *   writer    items reserved by writers (a compare-exchange on it)
 *   commit    items published: writers publish in reservation order, so
 *             everything below commit is complete
 *   overflow  items a reader skipped because writers had overwritten them
 * Invariant while no writer is mid-copy: reader <= commit == writer.
 *
 * Blocking is the caller's policy, given as callbacks
 * (recorder_ring_block_fn); NULL means the default noted at each function.
 *
 * Source-compatible with the seed library (c3d/recorder)'s recorder_ring.h;
 * what differs is listed in probes/PROBES.md. These rings are separate from
 * the per-CPU topic rings RECORD writes (recorder/registry.h).
 */
#ifndef RECORDER_RING_H
#define RECORDER_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Atomic helpers the seed's programs use on their own counters. */
#define recorder_ring_fetch_add(Value, Offset)                              \
    __atomic_fetch_add(&(Value), (Offset), __ATOMIC_ACQ_REL)
#define recorder_ring_add_fetch(Value, Offset)                              \
    __atomic_add_fetch(&(Value), (Offset), __ATOMIC_ACQ_REL)
/* `Expected` is an lvalue: on failure it receives the current value. */
#define recorder_ring_compare_exchange(Value, Expected, New)                \
    __atomic_compare_exchange_n(&(Value), &(Expected), (New), 0,            \
                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)

#define RECORDER_RING_MAYBE_UNUSED __attribute__((unused))

typedef uintptr_t ringidx_t;

/* The header; items follow it at offset sizeof(recorder_ring_t) (64: the
 * alignment keeps that offset right for items aligned up to 64 bytes). */
typedef struct recorder_ring {
    size_t size;            /* items in the ring */
    size_t item_size;       /* bytes per item */
    ringidx_t reader;
    ringidx_t writer;
    ringidx_t commit;
    ringidx_t overflow;
} __attribute__((aligned(64))) recorder_ring_t, *recorder_ring_p;

/* Called when an operation cannot proceed at once, with the range it
 * wants [from, to). Return true once it can proceed (the callback waited),
 * false to give up: a write then writes what fits, a read reads what is
 * there, an overflowed read skips what was lost. */
typedef bool (*recorder_ring_block_fn)(recorder_ring_p ring,
                                       ringidx_t from, ringidx_t to);

recorder_ring_p recorder_ring_init(recorder_ring_p ring, size_t size,
                                   size_t item_size);
/* NULL without memory (or for a size of 0). */
recorder_ring_p recorder_ring_new(size_t size, size_t item_size);
void recorder_ring_delete(recorder_ring_p ring);
/* Items committed and not yet read from `*reader` (NULL: the ring's own
 * reader), at most `size`. */
size_t recorder_ring_readable(recorder_ring_p ring, ringidx_t *reader);
/* Items that can be written before overwriting unread ones. */
size_t recorder_ring_writable(recorder_ring_p ring);
/* Address of the next item to read, or NULL if none; skips (and counts in
 * `overflow`) items already overwritten. Does not advance the reader. */
void *recorder_ring_peek(recorder_ring_p ring);
/* Copies up to `count` items from `*reader` (NULL: the ring's reader) and
 * advances it; returns the number copied. With `block` NULL (or returning
 * false) it copies only what is committed; with `overflow` NULL (or
 * returning false) it first skips items that writers overwrote. */
size_t recorder_ring_read(recorder_ring_p ring, void *data, size_t count,
                          ringidx_t *reader, recorder_ring_block_fn block,
                          recorder_ring_block_fn overflow);
/* Writes `count` items and publishes them in order; stores the index of
 * the first in `*writer` if not NULL; returns the number written. With
 * `write_block` NULL, a write larger than the room overwrites the oldest
 * items (a flight recorder); if it returns false, only what fits is
 * written. A writer waits (yielding, or through `commit_block`) for earlier
 * writers to publish; if `commit_block` returns false it publishes anyway,
 * and readers may then see an earlier writer's items before they are
 * complete. */
size_t recorder_ring_write(recorder_ring_p ring, const void *data,
                           size_t count, recorder_ring_block_fn write_block,
                           recorder_ring_block_fn commit_block,
                           ringidx_t *writer);

/* A ring type with helpers: Ring##_new(size), _delete, _peek, _read,
 * _write, _readable, _writable. */
#define RECORDER_RING_TYPE_DECLARE(Ring, Type)                              \
    typedef struct Ring {                                                   \
        recorder_ring_t ring;                                               \
        Type data[];                                                        \
    } Ring;                                                                 \
    typedef bool (*Ring##_block_fn)(Ring *, ringidx_t, ringidx_t);          \
    static inline RECORDER_RING_MAYBE_UNUSED Ring *Ring##_new(size_t size)  \
    {                                                                       \
        return (Ring *)recorder_ring_new(size, sizeof(Type));               \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED void Ring##_delete(Ring *rb)   \
    {                                                                       \
        recorder_ring_delete(&rb->ring);                                    \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED Type *Ring##_peek(Ring *rb)    \
    {                                                                       \
        return (Type *)recorder_ring_peek(&rb->ring);                       \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED size_t                         \
    Ring##_read(Ring *rb, Type *ptr, size_t count, ringidx_t *reader,       \
                Ring##_block_fn block, Ring##_block_fn overflow)            \
    {                                                                       \
        return recorder_ring_read(&rb->ring, ptr, count, reader,            \
                                  (recorder_ring_block_fn)block,            \
                                  (recorder_ring_block_fn)overflow);        \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED size_t                         \
    Ring##_write(Ring *rb, Type *ptr, size_t count, Ring##_block_fn wrblk,  \
                 Ring##_block_fn cmblk, ringidx_t *writer)                  \
    {                                                                       \
        return recorder_ring_write(&rb->ring, ptr, count,                   \
                                   (recorder_ring_block_fn)wrblk,           \
                                   (recorder_ring_block_fn)cmblk, writer);  \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED size_t Ring##_readable(Ring *rb) \
    {                                                                       \
        return recorder_ring_readable(&rb->ring, NULL);                     \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED size_t Ring##_writable(Ring *rb) \
    {                                                                       \
        return recorder_ring_writable(&rb->ring);                           \
    }

/* A named, statically allocated ring of `Size` items with helpers:
 * Name##_readable(), _writable(), _peek(), _read(ptr, count),
 * _write(ptr, count), _block_read(...), _block_write(...). */
#define RECORDER_RING_DECLARE(Name, Type, Size)                             \
    extern struct Name##_ring {                                             \
        recorder_ring_t ring;                                               \
        Type data[Size];                                                    \
    } Name;                                                                 \
    _Static_assert(__builtin_offsetof(struct Name##_ring, data)             \
                   == sizeof(recorder_ring_t), "ring items follow the header"); \
    static inline RECORDER_RING_MAYBE_UNUSED size_t Name##_readable(void)   \
    {                                                                       \
        return recorder_ring_readable(&Name.ring, NULL);                    \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED size_t Name##_writable(void)   \
    {                                                                       \
        return recorder_ring_writable(&Name.ring);                          \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED Type *Name##_peek(void)        \
    {                                                                       \
        return (Type *)recorder_ring_peek(&Name.ring);                      \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED size_t                         \
    Name##_read(Type *ptr, ringidx_t count)                                 \
    {                                                                       \
        return recorder_ring_read(&Name.ring, ptr, count, NULL, NULL, NULL); \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED size_t                         \
    Name##_write(const Type *ptr, ringidx_t count)                          \
    {                                                                       \
        return recorder_ring_write(&Name.ring, ptr, count, NULL, NULL,      \
                                   NULL);                                   \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED size_t                         \
    Name##_block_read(Type *ptr, size_t count, ringidx_t *reader,           \
                      recorder_ring_block_fn block,                         \
                      recorder_ring_block_fn overflow)                      \
    {                                                                       \
        return recorder_ring_read(&Name.ring, ptr, count, reader, block,    \
                                  overflow);                                \
    }                                                                       \
    static inline RECORDER_RING_MAYBE_UNUSED size_t                         \
    Name##_block_write(const Type *ptr, size_t count,                       \
                       recorder_ring_block_fn write_block,                  \
                       recorder_ring_block_fn commit_block, ringidx_t *pos) \
    {                                                                       \
        return recorder_ring_write(&Name.ring, ptr, count, write_block,     \
                                   commit_block, pos);                      \
    }

#define RECORDER_RING_DEFINE(Name, Type, Size)                              \
    struct Name##_ring Name = {                                             \
        .ring = { .size = (Size), .item_size = sizeof(Type) },              \
    };

#endif /* RECORDER_RING_H */
