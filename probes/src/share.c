/* share.c - RECORDER_SHARE=DIR: rings that outlive the process.
 *
 * Shards are carved from a file in DIR and mapped MAP_SHARED, so the page
 * cache holds every record the moment it is written; a SIGKILL loses
 * nothing. Blocks are reserved with fallocate before use: a full disk shows
 * up as an error here (the shard then lives in anonymous memory), never as a
 * SIGBUS in the middle of RECORD. A normal exit removes the file; a crash
 * leaves it for `recorder dump --shm`.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "recorder/share.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_MAPPINGS 4096

static int share_fd = -1;
static char share_path[PATH_MAX];
static __u64 file_end;                  /* bytes allocated in the file */
static atomic_flag share_lock = ATOMIC_FLAG_INIT;
static struct mapping { void *address; __u64 offset, bytes; }
    mappings[MAX_MAPPINGS];
static unsigned mapping_count;
static int reported_full;
static __u64 last_maps_hash;            /* of the last maps block written */

static size_t page_size(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

static __u64 round_to_page(__u64 bytes)
{
    __u64 page = page_size();
    return (bytes + page - 1) / page * page;
}

/* Reserves a block; returns its offset or -1 (disk full, I/O error). */
static long long reserve_block(__u32 kind, __u64 payload_bytes)
{
    __u64 bytes = round_to_page(sizeof(struct recorder_share_block)
                                + payload_bytes);
    __u64 offset = file_end;
    int status = posix_fallocate(share_fd, (off_t)offset, (off_t)bytes);
    if (status != 0) {
        if (!reported_full++)
            recorder_error("recorder: RECORDER_SHARE file %s: %s; keeping "
                           "new rings in memory only", share_path,
                           strerror(status));
        return -1;
    }
    struct recorder_share_block block = {
        .magic = RECORDER_SHARE_BLOCK_MAGIC, .kind = kind, .bytes = bytes,
        .payload_bytes = payload_bytes,
    };
    if (pwrite(share_fd, &block, sizeof(block), (off_t)offset)
        != (ssize_t)sizeof(block))
        return -1;
    file_end = offset + bytes;
    return (long long)offset;
}

/* The text of /proc/self/maps, read into pages of its own rather than the
 * stack (topics may be registered on a thread with a small stack), up to a
 * bound that a process with thousands of mappings still fits in. */
#define MAPS_MAX (4u << 20)

static void write_maps_block(void)
{
    char *buffer = mmap(NULL, MAPS_MAX, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (buffer == MAP_FAILED)
        return;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    size_t length = 0;
    ssize_t got;
    if (fd >= 0) {
        while (length < MAPS_MAX
               && (got = read(fd, buffer + length, MAPS_MAX - length)) > 0)
            length += (size_t)got;
        close(fd);
    }
    /* Topics registered one after another rarely change the maps: keep a
     * block only when the text differs from the last one (FNV-1a). */
    __u64 hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < length; i++)
        hash = (hash ^ (unsigned char)buffer[i]) * 0x100000001b3ull;
    long long offset = length && hash != last_maps_hash
        ? reserve_block(RECORDER_SHARE_MAPS, length) : -1;
    if (offset >= 0
        && pwrite(share_fd, buffer, length,
                  (off_t)offset + (off_t)sizeof(struct recorder_share_block))
           == (ssize_t)length)
        last_maps_hash = hash;
    munmap(buffer, MAPS_MAX);
}

static void write_topic_block(const struct recorder_topic *topic)
{
    struct recorder_share_topic record = {
        .id = topic->id, .size = topic->size,
        .topic_address = (__u64)(uintptr_t)topic,
    };
    snprintf(record.name, sizeof(record.name), "%s", topic->name);
    snprintf(record.description, sizeof(record.description), "%s",
             topic->description ? topic->description : "");
    long long offset = reserve_block(RECORDER_SHARE_TOPIC, sizeof(record));
    if (offset >= 0)
        pwrite(share_fd, &record, sizeof(record),
               (off_t)offset + (off_t)sizeof(struct recorder_share_block));
}

static int try_lock(void)
{
    return !atomic_flag_test_and_set_explicit(&share_lock,
                                              memory_order_acquire);
}

static void unlock(void)
{
    atomic_flag_clear_explicit(&share_lock, memory_order_release);
}

static void remove_at_exit(void)
{
    if (share_fd >= 0 && secure_getenv("RECORDER_SHARE_KEEP") == NULL)
        unlink(share_path);
}

static int create_file(void)
{
    const char *directory = secure_getenv("RECORDER_SHARE");
    char command[16] = "";
    prctl(PR_GET_NAME, command);
    int length = snprintf(share_path, sizeof(share_path), "%s/%s.%d.recorder",
                          directory, command, (int)getpid());
    /* A name cut at PATH_MAX is another file: never unlink or create it. */
    if (length < 0 || (size_t)length >= sizeof(share_path)) {
        recorder_error("recorder: RECORDER_SHARE: directory name too long "
                       "(%zu bytes)", strlen(directory));
        share_path[0] = 0;
        return -1;
    }
    /* Records may hold secrets, and DIR may be shared (/tmp): only the
     * owner reads the file, and a planted symlink is removed, not followed
     * (a stale file of a process with the same pid goes the same way). */
    unlink(share_path);
    int fd = open(share_path,
                  O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        recorder_error("recorder: RECORDER_SHARE: cannot create %s: %s",
                       share_path, strerror(errno));
        return -1;
    }
    share_fd = fd;
    file_end = 0;
    last_maps_hash = 0;
    long long offset = reserve_block(RECORDER_SHARE_HEADER,
                                     sizeof(struct recorder_share_file));
    if (offset < 0) {
        close(fd);
        unlink(share_path);
        share_fd = -1;
        return -1;
    }
    struct recorder_share_file header = {
        .magic = RECORDER_SHARE_MAGIC,
        .version = RECORDER_SHARE_VERSION,
        .entry_size = RECORDER_ENTRY_SIZE,
        .pid = (__u32)getpid(),
        .page_size = (__u32)page_size(),
        .created_ns = recorder_clock_now(),
        .registry_address = (__u64)(uintptr_t)&recorder_registry,
    };
    memcpy(header.command, command, sizeof(header.command));
    ssize_t exe_length = readlink("/proc/self/exe", header.executable,
                              sizeof(header.executable) - 1);
    if (exe_length < 0)
        header.executable[0] = 0;
    pwrite(fd, &header, sizeof(header),
           (off_t)offset + (off_t)sizeof(struct recorder_share_block));
    write_maps_block();
    return 0;
}

void recorder_share_init(void)
{
    const char *directory = secure_getenv("RECORDER_SHARE");
    if (!directory || !*directory)
        return;
    if (create_file() == 0)
        atexit(remove_at_exit);
}

void recorder_share_topic(struct recorder_topic *topic)
{
    if (share_fd < 0)
        return;
    while (!try_lock())
        ;
    write_topic_block(topic);
    /* A topic registered late may come from a library just loaded. */
    if (recorder_registry.topic_count > 2)
        write_maps_block();
    unlock();
}

void *recorder_share_alloc_shard(struct recorder_topic *topic, unsigned cpu,
                                 size_t bytes)
{
    (void)cpu;
    if (share_fd < 0 || !topic)
        return NULL;
    /* Never wait here: a signal handler may interrupt the lock holder. */
    if (!try_lock())
        return NULL;
    void *shard = NULL;
    long long offset = mapping_count < MAX_MAPPINGS
        ? reserve_block(RECORDER_SHARE_SHARD, bytes) : -1;
    if (offset >= 0) {
        __u64 total = round_to_page(sizeof(struct recorder_share_block)
                                    + bytes);
        char *block = mmap(NULL, total, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_POPULATE, share_fd, (off_t)offset);
        if (block != MAP_FAILED) {
            mappings[mapping_count++] = (struct mapping) {
                block, (__u64)offset, total };
            shard = block + sizeof(struct recorder_share_block);
        }
    }
    unlock();
    return shard;
}

/* Held across fork (see core.c); the child releases it in
 * recorder_share_after_fork. */
void recorder_share_fork_prepare(void)
{
    while (!try_lock())
        sched_yield();
}

void recorder_share_fork_parent(void)
{
    unlock();
}

static int read_all(int fd, char *buffer, __u64 bytes, __u64 offset)
{
    while (bytes) {
        ssize_t got = pread(fd, buffer, bytes, (off_t)offset);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        buffer += got;
        offset += (__u64)got;
        bytes -= (__u64)got;
    }
    return 0;
}

/* Puts a private copy of a mapping of the parent's file at the same
 * address: anonymous memory filled from that file (read from the file, not
 * from the mapping, which a failed MAP_FIXED may have taken away). */
static int make_private(const struct mapping *map, int parent_fd)
{
    char *copy = mmap(NULL, map->bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy != MAP_FAILED) {
        if (read_all(parent_fd, copy, map->bytes, map->offset) == 0
            && mremap(copy, map->bytes, map->bytes,
                      MREMAP_MAYMOVE | MREMAP_FIXED, map->address)
               != MAP_FAILED)
            return 0;
        munmap(copy, map->bytes);
    }
    /* No memory for a copy: copy-on-write pages of the parent's file keep
     * the child's writes its own (pages it has not written yet may still
     * show the parent's later records). */
    if (mmap(map->address, map->bytes, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_FIXED, parent_fd, (off_t)map->offset)
        != MAP_FAILED)
        return 0;
    recorder_error("recorder: RECORDER_SHARE: cannot detach the ring at %p "
                   "from the parent's file: %s", map->address,
                   strerror(errno));
    return -1;
}

/* Copies a mapping into the child's file and maps the copy in its place;
 * returns 0 or an errno. */
static int move_to_child_file(struct mapping *map)
{
    __u64 offset = file_end;
    int status = posix_fallocate(share_fd, (off_t)offset, (off_t)map->bytes);
    if (status != 0)
        return status;
    ssize_t written = pwrite(share_fd, map->address, map->bytes,
                             (off_t)offset);
    if (written != (ssize_t)map->bytes)
        return written < 0 ? errno : ENOSPC;
    if (mmap(map->address, map->bytes, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_FIXED, share_fd, (off_t)offset) == MAP_FAILED)
        return errno;
    map->offset = offset;
    file_end = offset + map->bytes;
    return 0;
}

/* The child must not write into its parent's file: give it its own copy,
 * mapped at the same addresses, so pointers held anywhere stay valid. What
 * cannot be copied there (a full disk) becomes private memory, never stays
 * shared with the parent, whose records the child would overwrite. */
void recorder_share_after_fork(void)
{
    if (share_fd < 0) {
        unlock();
        return;
    }
    int parent_fd = share_fd;
    unsigned moved = 0;
    if (create_file() == 0) {
        for (; moved < mapping_count; moved++) {
            int status = move_to_child_file(&mappings[moved]);
            if (status != 0) {
                unsigned left = mapping_count - moved;
                recorder_error("recorder: RECORDER_SHARE file %s: %s; the "
                               "child keeps %u ring%s in memory only",
                               share_path, strerror(status), left,
                               left == 1 ? "" : "s");
                break;
            }
        }
    } else {
        share_fd = -1;
    }
    for (unsigned m = moved; m < mapping_count; m++)
        make_private(&mappings[m], parent_fd);
    /* Private memory is copied by fork itself: later forks skip it. */
    mapping_count = moved;
    /* Topics go last in the child's file; readers take blocks in any order. */
    if (share_fd >= 0)
        for (struct recorder_topic *topic = recorder_registry.topics; topic;
             topic = topic->next)
            write_topic_block(topic);
    close(parent_fd);
    unlock();
}
