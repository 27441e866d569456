/* recorder/share.h - the file RECORDER_SHARE=DIR keeps a process's rings in.
 *
 * DIR/<comm>.<pid>.recorder is a sequence of page-aligned blocks. The shards
 * are the process's live rings, mapped MAP_SHARED from the file, so the
 * file holds the last records even after SIGKILL. Addresses inside entries
 * (format, where, %s arguments) are the process's: a reader resolves them
 * against the MAPS block and the mapped files, and shows what it cannot read
 * as unreadable. probes/PROBES.md describes the format for readers.
 */
#ifndef RECORDER_SHARE_H
#define RECORDER_SHARE_H

#include "registry.h"

#define RECORDER_SHARE_MAGIC        0x3148535243455200ull  /* "\0RECRSH1" */
#define RECORDER_SHARE_VERSION      1
#define RECORDER_SHARE_BLOCK_MAGIC  0x4b4c4252u             /* "RBLK" */

enum recorder_share_block_kind {
    RECORDER_SHARE_HEADER = 1,  /* first block: struct recorder_share_file */
    RECORDER_SHARE_TOPIC  = 2,  /* struct recorder_share_topic */
    RECORDER_SHARE_SHARD  = 3,  /* struct recorder_shard + entries */
    RECORDER_SHARE_MAPS   = 4,  /* text of /proc/PID/maps when written */
};

/* Starts every block; `bytes` counts the header and is a multiple of the
 * page size, so the next block starts at offset + bytes. */
struct recorder_share_block {
    __u32 magic;
    __u32 kind;
    __u64 bytes;
    __u64 payload_bytes;        /* bytes used after this header */
    __u64 reserved[5];          /* a shard's entries start cache-aligned */
};
_Static_assert(sizeof(struct recorder_share_block) == 64,
               "share block header size is part of the file format");

struct recorder_share_file {
    __u64 magic;
    __u32 version;
    __u32 entry_size;           /* RECORDER_ENTRY_SIZE */
    __u32 pid;                  /* rewritten in a child after fork */
    __u32 page_size;
    __u64 created_ns;           /* CLOCK_MONOTONIC */
    __u64 registry_address;     /* &recorder_registry in the process */
    char command[16];           /* comm */
    char executable[256];       /* /proc/self/exe when created */
};

struct recorder_share_topic {
    __u32 id;
    __u32 size;
    __u64 topic_address;        /* the struct recorder_topic in the process */
    char name[128];
    char description[256];
};

/* A shard block's payload is a struct recorder_shard whose entries follow;
 * the shard header's topic_id says whose (~0: unused). */

#endif /* RECORDER_SHARE_H */
