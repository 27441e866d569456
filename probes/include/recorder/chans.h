/* recorder/chans.h - the seed library's shared-memory channels: named rings
 * of (timestamp, value) pairs in a file that other processes open.
 *
 *   recorder_chans_p chans = recorder_chans_new("/tmp/values");
 *   recorder_data lo = { .real_value = 0 }, hi = { .real_value = 1 };
 *   recorder_chan_p x = recorder_chan_new(chans, RECORDER_REAL, 256, "x",
 *                                         "the x value", "m", lo, hi);
 *   recorder_data sample[2] = { { .unsigned_value = recorder_tick() },
 *                               { .real_value = 0.5 } };
 *   recorder_chan_write(x, sample, 1);
 *
 *   // in another process
 *   recorder_chans_p seen = recorder_chans_open("/tmp/values");
 *   recorder_chan_p found = recorder_chan_find(seen, "x", NULL);
 *   ringidx_t reader = 0;
 *   recorder_data got[2 * 16];
 *   size_t n = recorder_chan_read(found, got, 16, &reader);
 *
 * Source-compatible with the seed (c3d/recorder); the file format is ours
 * (probes/src/chans.c), and what differs is listed in probes/PROBES.md.
 * A file opened with recorder_chans_open is input from another process: it
 * is read with pread, every offset and size checked, never trusted.
 */
#ifndef RECORDER_CHANS_H
#define RECORDER_CHANS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "../recorder_ring.h"

typedef enum recorder_type {
    RECORDER_NONE,              /* nothing written yet (type from format) */
    RECORDER_INVALID,
    RECORDER_SIGNED,
    RECORDER_UNSIGNED,
    RECORDER_REAL
} recorder_type;

/* One value; a channel's items are two of them: timestamp (unsigned, in
 * RECORDER_HZ ticks), then the value. */
typedef union recorder_data {
    intptr_t signed_value;
    uintptr_t unsigned_value;
    double real_value;
} recorder_data;

typedef struct recorder_chans *recorder_chans_p;
typedef struct recorder_chan *recorder_chan_p;

#define RECORDER_CHAN_MAGIC     (0xC0DABABE ^ (INTPTR_MAX > 0x7fffffff))
#define RECORDER_CHAN_VERSION   RECORDER_VERSION(1, 0, 5)
#define RECORDER_EXPORT_SIZE    2048

/* The file RECORDER_TRACES="topic=name1,name2" exports channels into:
 * DIR/recorder_chans for RECORDER_SHARE=DIR (ours names a directory), else
 * the seed's /tmp/recorder_share. */
const char *recorder_export_file(void);

/* Writing (the process that owns the file). recorder_chans_new replaces
 * `file` (never writes through a link planted there); NULL on error. */
recorder_chans_p recorder_chans_new(const char *file);
void recorder_chans_delete(recorder_chans_p chans);
/* A channel of `size` (timestamp, value) items; NULL on error. Names,
 * descriptions and units are kept up to 255 bytes. */
recorder_chan_p recorder_chan_new(recorder_chans_p chans, recorder_type type,
                                  size_t size, const char *name,
                                  const char *description, const char *unit,
                                  recorder_data min, recorder_data max);
void recorder_chan_delete(recorder_chan_p chan);
/* Writes `count` items (2 * count recorder_data: timestamp, value), the
 * oldest overwritten when full; returns the count written. Owner only. */
size_t recorder_chan_write(recorder_chan_p chan, const void *ptr,
                           size_t count);
size_t recorder_chan_writable(recorder_chan_p chan);
ringidx_t recorder_chan_writer(recorder_chan_p chan);
ringidx_t recorder_chan_reader(recorder_chan_p chan);
size_t recorder_chan_item_size(recorder_chan_p chan);

/* Reading, from any process. recorder_chans_open returns NULL for a file
 * that is missing, not ours, or not a valid channels file. */
recorder_chans_p recorder_chans_open(const char *file);
void recorder_chans_close(recorder_chans_p chans);
/* Leaves a recorder_trace_set spec for the owner (up to 1023 bytes);
 * false if it does not fit or the file is read-only. */
bool recorder_chans_configure(recorder_chans_p chans, const char *message);
/* False once the file was replaced or rewritten by a new owner. */
bool recorder_chans_valid(recorder_chans_p chans);

/* The next channel after `after` (NULL: the first) whose whole name the
 * regular expression `pattern` matches (extended, case-insensitive). */
recorder_chan_p recorder_chan_find(recorder_chans_p chans,
                                   const char *pattern,
                                   recorder_chan_p after);
const char *recorder_chan_name(recorder_chan_p chan);
const char *recorder_chan_description(recorder_chan_p chan);
const char *recorder_chan_unit(recorder_chan_p chan);
recorder_data recorder_chan_min(recorder_chan_p chan);
recorder_data recorder_chan_max(recorder_chan_p chan);
recorder_type recorder_chan_type(recorder_chan_p chan);
size_t recorder_chan_size(recorder_chan_p chan);
/* Items written and not yet read from `*readerID` (NULL: the index kept in
 * the file), at most the channel's size. */
size_t recorder_chan_readable(recorder_chan_p chan, ringidx_t *readerID);
/* Copies up to `count` items (2 * count recorder_data) from `*readerID`
 * (NULL: the file's index) and advances it, skipping items already
 * overwritten; returns the count copied. */
size_t recorder_chan_read(recorder_chan_p chan, recorder_data *ptr,
                          size_t count, ringidx_t *readerID);

#endif /* RECORDER_CHANS_H */
