/* chans.c - the seed's shared-memory channels (recorder/chans.h), on a file
 * format of our own.
 *
 * The file: a header page, then one block per channel, 64-byte aligned:
 *   struct chans_header  magic, version, serial, the newest channel, the
 *                        bytes used, and a mailbox for recorder_chans_configure
 *   struct chan_block    type, the next (older, lower) channel, offsets of
 *                        name, description and unit, min, max, a
 *                        recorder_ring_t; then `size` items of two
 *                        recorder_data (timestamp, value); then the strings
 * The owner maps the file MAP_SHARED into an address range reserved once, so
 * that adding a channel never moves what writers are using, and writes items
 * the way a recorder_ring does: reserve with a fetch-add on `writer`, copy,
 * publish `commit` in order. It keeps its own copy of every size and offset,
 * so nothing another process writes into the file steers its stores.
 *
 * Every other process reads with pread only: a file that is corrupt, or
 * shrinks or grows while read, cannot fault the reader. Each offset is
 * checked against the file's size, each string must end within 256 bytes,
 * and the walk of the channel list stops after MAX_CHANNELS or at an offset
 * that does not decrease.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HEADER_BYTES    4096u
#define COMMAND_BYTES   1024u
#define MAX_CHANNELS    4096u
#define TEXT_MAX        256u            /* a string and its NUL */
#define RESERVE_BYTES   (64ull << 20)   /* the largest file an owner makes */
#define ITEM_BYTES      (2 * sizeof(recorder_data))
#define PUBLISH_TRIES   10000           /* yields waiting for earlier writers */

struct chans_header {
    __u32 magic, version, serial, reserved0;
    __u64 head;                 /* offset of the newest channel, 0: none */
    __u64 end;                  /* bytes in use */
    __u64 command_sequence;     /* bumped after each command is written */
    __u64 reserved[4];
    char command[COMMAND_BYTES];        /* a spec, NUL-terminated */
};
_Static_assert(sizeof(struct chans_header) <= HEADER_BYTES, "one page");

struct chan_block {
    __u32 type;                 /* recorder_type */
    __u32 reserved0;
    __u64 next;                 /* the older channel's offset, 0: none */
    __u64 name, description, unit;      /* file offsets of strings */
    recorder_data min, max;
    __u64 reserved1;
    recorder_ring_t ring;       /* its items follow the block */
};
_Static_assert(sizeof(struct chan_block) == 128, "items stay aligned");

struct recorder_chan {
    struct recorder_chans *chans;
    __u64 offset;               /* of its chan_block */
    __u64 size;                 /* items, as checked when found */
    recorder_data min, max;
    char name[TEXT_MAX], description[TEXT_MAX], unit[TEXT_MAX];
    struct recorder_chan *next;
};

struct recorder_chans {
    int fd;
    int owner;                  /* made here: mapped, written through `base` */
    int writable;               /* the fd may be written (configure) */
    __u32 serial;
    dev_t device;
    ino_t inode;
    char *path;
    char *base;                 /* owner: the reserved range */
    __u64 mapped, end, newest;  /* owner: its own copies */
    pthread_mutex_t lock;       /* owner: adding and deleting channels */
    struct recorder_chan *head;
};

#define RING_AT(chans, chan) \
    (&((struct chan_block *)((chans)->base + (chan)->offset))->ring)
#define FIELD_OFFSET(chan, field) \
    ((chan)->offset + offsetof(struct chan_block, ring) \
     + offsetof(recorder_ring_t, field))

static int read_exactly(int fd, void *buffer, size_t bytes, __u64 offset)
{
    return offset <= (__u64)LLONG_MAX - bytes
        && pread(fd, buffer, bytes, (off_t)offset) == (ssize_t)bytes;
}

static __u32 new_serial(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    __u32 serial = (__u32)now.tv_nsec ^ (__u32)now.tv_sec ^ (__u32)getpid();
    return serial ? serial : 1;
}

static void copy_text(char *into, const char *text)
{
    snprintf(into, TEXT_MAX, "%s", text ? text : "");
}

static void free_handles(struct recorder_chans *chans)
{
    struct recorder_chan *chan = chans->head, *next;
    for (; chan; chan = next) {
        next = chan->next;
        free(chan);
    }
    chans->head = NULL;
}

/* ------------------------------------------------------------------------ */
/* The owner                                                                */
/* ------------------------------------------------------------------------ */

/* Extends the file and its mapping to `bytes`; 0 on error (full disk, the
 * reserved range exhausted). posix_fallocate first: a full disk fails here,
 * never as a SIGBUS in a write. */
static int grow(struct recorder_chans *chans, __u64 bytes)
{
    __u64 page = (__u64)sysconf(_SC_PAGESIZE);
    __u64 wanted = (bytes + page - 1) / page * page;
    if (wanted <= chans->mapped)
        return 1;
    if (wanted > RESERVE_BYTES
        || posix_fallocate(chans->fd, (off_t)chans->mapped,
                           (off_t)(wanted - chans->mapped)) != 0
        || mmap(chans->base + chans->mapped, wanted - chans->mapped,
                PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, chans->fd,
                (off_t)chans->mapped) == MAP_FAILED)
        return 0;
    chans->mapped = wanted;
    return 1;
}

static struct chans_header *header_of(struct recorder_chans *chans)
{
    return (struct chans_header *)chans->base;
}

recorder_chans_p recorder_chans_new(const char *file)
{
    if (!file || strlen(file) + 8 >= PATH_MAX) {
        RECORD(recorder_core, "recorder_chans_new: no file or name too long");
        return NULL;
    }
    struct recorder_chans *chans = calloc(1, sizeof(*chans));
    char temporary[PATH_MAX];
    snprintf(temporary, sizeof(temporary), "%s.XXXXXX", file);
    if (!chans || !(chans->path = strdup(file)))
        goto fail_memory;
    /* Made aside and renamed into place: whatever was at `file` (a link
     * someone planted) is replaced, never written through. */
    chans->fd = mkostemp(temporary, O_CLOEXEC);
    if (chans->fd < 0)
        goto fail_memory;
    chans->base = mmap(NULL, RESERVE_BYTES, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (chans->base == MAP_FAILED || !grow(chans, HEADER_BYTES))
        goto fail_file;
    chans->owner = chans->writable = 1;
    chans->serial = new_serial();
    chans->end = HEADER_BYTES;
    pthread_mutex_init(&chans->lock, NULL);
    struct chans_header *header = header_of(chans);
    header->magic = RECORDER_CHAN_MAGIC;
    header->version = RECORDER_CHAN_VERSION;
    header->serial = chans->serial;
    header->end = chans->end;
    struct stat status;
    if (fstat(chans->fd, &status) != 0 || rename(temporary, file) != 0)
        goto fail_file;
    chans->device = status.st_dev;
    chans->inode = status.st_ino;
    RECORD(recorder_core, "Created channels file %s", chans->path);
    return chans;

fail_file:
    RECORD(recorder_core, "Cannot create channels file %s: errno %d",
           file, errno);
    unlink(temporary);
    if (chans->base && chans->base != MAP_FAILED)
        munmap(chans->base, RESERVE_BYTES);
    close(chans->fd);
fail_memory:
    if (chans)
        free(chans->path);
    free(chans);
    return NULL;
}

void recorder_chans_delete(recorder_chans_p chans)
{
    if (!chans)
        return;
    if (chans->owner)
        munmap(chans->base, RESERVE_BYTES);
    free_handles(chans);
    close(chans->fd);
    free(chans->path);
    free(chans);
}

static __u64 put_text(struct recorder_chans *chans, __u64 at, const char *text)
{
    size_t length = strnlen(text, TEXT_MAX - 1);
    memcpy(chans->base + at, text, length);
    chans->base[at + length] = 0;
    return length + 1;
}

recorder_chan_p recorder_chan_new(recorder_chans_p chans, recorder_type type,
                                  size_t size, const char *name,
                                  const char *description, const char *unit,
                                  recorder_data min, recorder_data max)
{
    if (!chans || !chans->owner || size == 0
        || size > RESERVE_BYTES / ITEM_BYTES)
        return NULL;
    struct recorder_chan *chan = calloc(1, sizeof(*chan));
    if (!chan)
        return NULL;
    copy_text(chan->name, name);
    copy_text(chan->description, description);
    copy_text(chan->unit, unit);
    chan->chans = chans;
    chan->size = size;
    chan->min = min;
    chan->max = max;
    __u64 strings = sizeof(struct chan_block) + size * ITEM_BYTES;
    __u64 bytes = (strings + 3 * TEXT_MAX + 63) & ~63ull;

    pthread_mutex_lock(&chans->lock);
    __u64 offset = chans->end;
    if (!grow(chans, offset + bytes)) {
        pthread_mutex_unlock(&chans->lock);
        RECORD(recorder_core, "Channel %s: file full", chan->name);
        free(chan);
        return NULL;
    }
    struct chan_block *block = (struct chan_block *)(chans->base + offset);
    memset(block, 0, sizeof(*block));
    block->type = type;
    block->next = chans->newest;
    block->min = min;
    block->max = max;
    __u64 at = offset + strings;
    block->name = at;
    at += put_text(chans, at, chan->name);
    block->description = at;
    at += put_text(chans, at, chan->description);
    block->unit = at;
    at += put_text(chans, at, chan->unit);
    block->ring.size = size;
    block->ring.item_size = ITEM_BYTES;
    chan->offset = offset;
    chans->end = offset + bytes;
    chans->newest = offset;
    /* Complete before readers can reach it. */
    struct chans_header *header = header_of(chans);
    header->end = chans->end;
    __atomic_store_n(&header->head, offset, __ATOMIC_RELEASE);
    chan->next = chans->head;       /* the owner lists newest first */
    chans->head = chan;
    pthread_mutex_unlock(&chans->lock);
    RECORD(recorder_core, "Channel %s: %zu items at %llu", chan->name, size,
           (unsigned long long)offset);
    return chan;
}

/* Drops the handle; the owner also unlinks the block from the file's list
 * (its space is not reused). */
void recorder_chan_delete(recorder_chan_p chan)
{
    if (!chan)
        return;
    struct recorder_chans *chans = chan->chans;
    if (chans->owner) {
        pthread_mutex_lock(&chans->lock);
        __u64 *link = &header_of(chans)->head, *own = &chans->newest;
        for (struct recorder_chan *walk = chans->head; walk; walk = walk->next) {
            struct chan_block *block =
                (struct chan_block *)(chans->base + walk->offset);
            if (walk == chan) {
                __atomic_store_n(link, block->next, __ATOMIC_RELEASE);
                *own = block->next;
                break;
            }
            link = &block->next;
            own = link;
        }
        pthread_mutex_unlock(&chans->lock);
    }
    for (struct recorder_chan **at = &chans->head; *at; at = &(*at)->next)
        if (*at == chan) {
            *at = chan->next;
            break;
        }
    free(chan);
}

size_t recorder_chan_write(recorder_chan_p chan, const void *ptr, size_t count)
{
    if (!chan || !chan->chans->owner || !ptr)
        return 0;
    recorder_ring_t *ring = RING_AT(chan->chans, chan);
    recorder_data *items = (recorder_data *)(ring + 1);
    const recorder_data *source = ptr;
    ringidx_t first = __atomic_fetch_add(&ring->writer, count, __ATOMIC_ACQ_REL);
    /* More than the ring holds: only the last `size` items survive. */
    size_t skipped = count > chan->size ? count - chan->size : 0;
    for (size_t i = skipped; i < count; i++) {
        size_t slot = (first + i) % chan->size;
        items[2 * slot] = source[2 * i];
        items[2 * slot + 1] = source[2 * i + 1];
    }
    /* Publish in order; a writer stuck (or a commit someone else rewrote)
     * costs a bounded wait, then this one publishes anyway. */
    for (int tries = 0;; tries++) {
        ringidx_t expected = first;
        if (__atomic_compare_exchange_n(&ring->commit, &expected,
                                        first + count, 0, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED))
            break;
        if (tries >= PUBLISH_TRIES) {
            __atomic_fetch_add(&ring->commit, count, __ATOMIC_RELEASE);
            break;
        }
        sched_yield();
    }
    return count;
}

/* ------------------------------------------------------------------------ */
/* Any process: the file through pread                                      */
/* ------------------------------------------------------------------------ */

static int read_ring(struct recorder_chan *chan, recorder_ring_t *ring)
{
    return chan && read_exactly(chan->chans->fd, ring, sizeof(*ring),
                                chan->offset + offsetof(struct chan_block,
                                                        ring));
}

size_t recorder_chan_writable(recorder_chan_p chan)
{
    recorder_ring_t ring;
    if (!read_ring(chan, &ring))
        return 0;
    intptr_t used = (intptr_t)(ring.writer - ring.reader);
    return used <= 0 ? chan->size
        : (size_t)used < chan->size ? chan->size - (size_t)used : 0;
}

ringidx_t recorder_chan_writer(recorder_chan_p chan)
{
    recorder_ring_t ring;
    return read_ring(chan, &ring) ? ring.writer : 0;
}

ringidx_t recorder_chan_reader(recorder_chan_p chan)
{
    recorder_ring_t ring;
    return read_ring(chan, &ring) ? ring.reader : 0;
}

size_t recorder_chan_item_size(recorder_chan_p chan)
{
    return chan ? ITEM_BYTES : 0;
}

/* A string at `offset`, ending before `limit` and within TEXT_MAX. */
static int read_text(int fd, __u64 offset, __u64 limit, char *into)
{
    if (offset >= limit)
        return 0;
    size_t bytes = limit - offset < TEXT_MAX ? (size_t)(limit - offset)
                                             : TEXT_MAX;
    ssize_t got = pread(fd, into, bytes, (off_t)offset);
    if (got <= 0 || !memchr(into, 0, (size_t)got))
        return 0;
    return 1;
}

/* The channel block at `offset` of a file of `file_bytes`, checked; NULL
 * for anything out of bounds or malformed. */
static struct recorder_chan *read_channel(int fd, __u64 offset,
                                          __u64 file_bytes,
                                          struct chan_block *block)
{
    if (offset % 64 || offset < HEADER_BYTES || file_bytes < sizeof(*block)
        || offset > file_bytes - sizeof(*block)
        || !read_exactly(fd, block, sizeof(*block), offset))
        return NULL;
    __u64 room = file_bytes - offset - sizeof(*block);
    __u64 size = block->ring.size;
    if (size == 0 || block->ring.item_size != ITEM_BYTES
        || size > room / ITEM_BYTES)
        return NULL;
    __u64 strings = offset + sizeof(*block) + size * ITEM_BYTES;
    struct recorder_chan *chan = calloc(1, sizeof(*chan));
    if (!chan)
        return NULL;
    if (block->name < strings || block->description < strings
        || block->unit < strings
        || !read_text(fd, block->name, file_bytes, chan->name)
        || !read_text(fd, block->description, file_bytes, chan->description)
        || !read_text(fd, block->unit, file_bytes, chan->unit)) {
        free(chan);
        return NULL;
    }
    chan->offset = offset;
    chan->size = size;
    chan->min = block->min;
    chan->max = block->max;
    return chan;
}

/* Lists the file's channels, oldest first (as the seed's reader does). */
static void list_channels(struct recorder_chans *chans, __u64 head,
                          __u64 file_bytes)
{
    struct chan_block block;
    __u64 offset = head;
    for (unsigned count = 0; offset && count < MAX_CHANNELS; count++) {
        struct recorder_chan *chan =
            read_channel(chans->fd, offset, file_bytes, &block);
        if (!chan) {
            RECORD(recorder_core, "Channels file %s: bad channel at %llu",
                   chans->path, (unsigned long long)offset);
            return;
        }
        chan->chans = chans;
        chan->next = chans->head;
        chans->head = chan;
        if (block.next >= offset)       /* older ones lie lower: no loops */
            return;
        offset = block.next;
    }
}

static int read_header(int fd, struct chans_header *header)
{
    return read_exactly(fd, header, offsetof(struct chans_header, command), 0)
        && header->magic == RECORDER_CHAN_MAGIC
        && header->version == RECORDER_CHAN_VERSION;
}

recorder_chans_p recorder_chans_open(const char *file)
{
    if (!file)
        return NULL;
    int writable = 1;
    int fd = open(file, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && (errno == EACCES || errno == EROFS || errno == EPERM)) {
        writable = 0;
        fd = open(file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    }
    struct stat status;
    struct chans_header header;
    struct recorder_chans *chans = NULL;
    if (fd < 0 || fstat(fd, &status) != 0 || !S_ISREG(status.st_mode)
        || !read_header(fd, &header)
        || !(chans = calloc(1, sizeof(*chans)))
        || !(chans->path = strdup(file))) {
        RECORD(recorder_core, "Cannot open channels file %s", file);
        if (fd >= 0)
            close(fd);
        free(chans);
        return NULL;
    }
    chans->fd = fd;
    chans->writable = writable;
    chans->serial = header.serial;
    chans->device = status.st_dev;
    chans->inode = status.st_ino;
    /* A new owner may rewrite the file meanwhile: list again, a few times. */
    for (int tries = 0; tries < 3; tries++) {
        list_channels(chans, header.head, (__u64)status.st_size);
        if (recorder_chans_valid(chans))
            return chans;
        free_handles(chans);
        if (!read_header(fd, &header) || fstat(fd, &status) != 0)
            break;
        chans->serial = header.serial;
    }
    recorder_chans_close(chans);
    return NULL;
}

void recorder_chans_close(recorder_chans_p chans)
{
    recorder_chans_delete(chans);
}

bool recorder_chans_valid(recorder_chans_p chans)
{
    struct chans_header header;
    struct stat status;
    return chans && read_header(chans->fd, &header)
        && header.serial == chans->serial
        && stat(chans->path, &status) == 0
        && status.st_dev == chans->device && status.st_ino == chans->inode;
}

bool recorder_chans_configure(recorder_chans_p chans, const char *message)
{
    if (!chans || !message || !chans->writable)
        return false;
    size_t length = strlen(message);
    struct chans_header header;
    if (length >= COMMAND_BYTES || !read_header(chans->fd, &header))
        return false;
    __u64 sequence = header.command_sequence + 1;
    return pwrite(chans->fd, message, length + 1,
                  offsetof(struct chans_header, command)) == (ssize_t)length + 1
        && pwrite(chans->fd, &sequence, sizeof(sequence),
                  offsetof(struct chans_header, command_sequence))
           == (ssize_t)sizeof(sequence);
}

/* The owner's side of the mailbox: the spec left since `*seen`, if any. */
int recorder_chans_command(recorder_chans_p chans, __u64 *seen,
                           char *into, size_t bytes)
{
    struct chans_header header;
    if (!chans || !read_header(chans->fd, &header)
        || header.command_sequence == *seen || bytes == 0)
        return 0;
    *seen = header.command_sequence;
    size_t wanted = bytes < COMMAND_BYTES ? bytes : COMMAND_BYTES;
    if (!read_exactly(chans->fd, into, wanted,
                      offsetof(struct chans_header, command)))
        return 0;
    into[wanted - 1] = 0;
    return 1;
}

recorder_chan_p recorder_chan_find(recorder_chans_p chans, const char *pattern,
                                   recorder_chan_p after)
{
    regex_t regex;
    if (!chans || !pattern || recorder_compile_name_regex(&regex, pattern))
        return NULL;
    struct recorder_chan *chan = after ? after->next : chans->head;
    while (chan && !recorder_name_matches(&regex, chan->name))
        chan = chan->next;
    regfree(&regex);
    return chan;
}

const char *recorder_chan_name(recorder_chan_p chan)
{
    return chan ? chan->name : NULL;
}

const char *recorder_chan_description(recorder_chan_p chan)
{
    return chan ? chan->description : NULL;
}

const char *recorder_chan_unit(recorder_chan_p chan)
{
    return chan ? chan->unit : NULL;
}

recorder_data recorder_chan_min(recorder_chan_p chan)
{
    return chan ? chan->min : (recorder_data) { 0 };
}

recorder_data recorder_chan_max(recorder_chan_p chan)
{
    return chan ? chan->max : (recorder_data) { 0 };
}

/* Read each time: an exported channel learns its type at its first value. */
recorder_type recorder_chan_type(recorder_chan_p chan)
{
    __u32 type;
    if (!chan || !read_exactly(chan->chans->fd, &type, sizeof(type),
                               chan->offset))
        return RECORDER_INVALID;
    return type <= RECORDER_REAL ? (recorder_type)type : RECORDER_INVALID;
}

/* The owner may set it while exporting (chans_export.c). */
void recorder_chan_set_type(recorder_chan_p chan, recorder_type type)
{
    if (chan && chan->chans->owner)
        __atomic_store_n(&((struct chan_block *)(chan->chans->base
                                                 + chan->offset))->type,
                         (__u32)type, __ATOMIC_RELEASE);
}

size_t recorder_chan_size(recorder_chan_p chan)
{
    return chan ? chan->size : 0;
}

size_t recorder_chan_readable(recorder_chan_p chan, ringidx_t *readerID)
{
    recorder_ring_t ring;
    if (!recorder_chans_valid(chan ? chan->chans : NULL)
        || !read_ring(chan, &ring))
        return 0;
    intptr_t readable = (intptr_t)(ring.commit
                                   - (readerID ? *readerID : ring.reader));
    if (readable <= 0)
        return 0;
    return (size_t)readable < chan->size ? (size_t)readable : chan->size;
}

/* Copies items [from, from + count) (count <= size) into `into`; returns
 * how many it read in full. */
static size_t read_items(struct recorder_chan *chan, ringidx_t from,
                         size_t count, recorder_data *into)
{
    size_t done = 0;
    while (done < count) {
        size_t slot = (from + done) % chan->size;
        size_t run = chan->size - slot < count - done ? chan->size - slot
                                                      : count - done;
        __u64 at = chan->offset + sizeof(struct chan_block) + slot * ITEM_BYTES;
        if (!read_exactly(chan->chans->fd, into + 2 * done, run * ITEM_BYTES,
                          at))
            break;
        done += run;
    }
    return done;
}

size_t recorder_chan_read(recorder_chan_p chan, recorder_data *ptr,
                          size_t count, ringidx_t *readerID)
{
    recorder_ring_t ring;
    if (!ptr || !recorder_chans_valid(chan ? chan->chans : NULL)
        || !read_ring(chan, &ring))
        return 0;
    ringidx_t from = readerID ? *readerID : ring.reader;
    if ((intptr_t)(ring.writer - from) > (intptr_t)chan->size)
        from = ring.writer - chan->size;        /* skip what was overwritten */
    intptr_t available = (intptr_t)(ring.commit - from);
    size_t taken = available <= 0 ? 0 : (size_t)available;
    if (taken > count)
        taken = count;
    if (taken > chan->size)
        taken = chan->size;
    taken = read_items(chan, from, taken, ptr);
    /* Writers that lapped the copy may have torn its oldest items. */
    ringidx_t writer = recorder_chan_writer(chan);
    if ((intptr_t)(writer - from) > (intptr_t)chan->size) {
        size_t lost = (size_t)(writer - chan->size - from);
        lost = lost < taken ? lost : taken;
        memmove(ptr, ptr + 2 * lost, (taken - lost) * ITEM_BYTES);
        taken -= lost;
        from += lost;
    }
    ringidx_t next = from + taken;
    if (readerID)
        *readerID = next;
    else if (chan->chans->owner)
        __atomic_store_n(&RING_AT(chan->chans, chan)->reader, next,
                         __ATOMIC_RELEASE);
    else if (chan->chans->writable)
        (void)!pwrite(chan->chans->fd, &next, sizeof(next),
                      (off_t)FIELD_OFFSET(chan, reader));
    return taken;
}
