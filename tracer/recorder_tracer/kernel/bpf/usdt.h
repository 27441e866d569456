/* usdt.h - argument specs the controller writes, events usdt.c sends.
 * Included by usdt.c; Python fills and reads these through bcc's compiled
 * tables (b["sites"].Key/.Leaf, b["scratch"].Leaf), never a hand-written
 * mirror. decode/usdt_args.py lowers a note's argument string into a
 * struct usdt_site. */
#ifndef RECORDER_USDT_H
#define RECORDER_USDT_H

#include <linux/types.h>

#define USDT_MAX_ARGS 6             /* arguments decoded per hit */
#ifndef USDT_STRING_MAX
#define USDT_STRING_MAX 128         /* bytes kept of each string argument */
#endif
#ifndef USDT_MAX_SITES
#define USDT_MAX_SITES 16384        /* (process, probe site) pairs */
#endif

/* Where an argument lives, as the note's operand says. */
enum usdt_arg_kind {
    USDT_ARG_NONE = 0,      /* absent or unsupported: sent as unreadable */
    USDT_ARG_CONST = 1,     /* $value */
    USDT_ARG_REG = 2,       /* %reg */
    USDT_ARG_DEREF = 3,     /* value(%reg): user memory */
    USDT_ARG_ABS = 4,       /* user memory at value (a resolved sym(%rip)) */
};

struct usdt_arg_spec {
    __s64 value;            /* the constant, offset or absolute address */
    __u16 reg_offset;       /* byte offset of the register in pt_regs */
    __u8 kind;              /* enum usdt_arg_kind */
    __u8 size;              /* 1, 2, 4 or 8 bytes */
    __u8 is_signed;
    __u8 fetch_string;      /* also copy the NUL-terminated string it points to */
    __u8 pad[2];
};

/* A probe site in one process: the runtime address PT_REGS_IP(ctx) shows,
 * load base + the note's address. The PID is part of the key because two
 * non-PIE programs load different probes at the same address. */
struct usdt_site_key {
    __u32 pid;
    __u32 pad;
    __u64 ip;
};

struct usdt_site {
    __u32 nargs;
    __u32 pad;
    struct usdt_arg_spec args[USDT_MAX_ARGS];
};

/* The string an argument points to. `length` counts the bytes copied
 * with the NUL, 0 when none was asked for, negative for the error of
 * bpf_probe_read_user_str: an unreadable string says so. (A struct, not
 * char[6][N]: bcc's table description drops an array's inner dimension.) */
struct usdt_string {
    __s32 length;
    __u32 pad;
    char text[USDT_STRING_MAX];
};

/* One probe hit. */
struct usdt_event {
    __u64 ts;               /* bpf_ktime_get_ns(), CLOCK_MONOTONIC */
    __u64 ip;               /* runtime address of the site */
    __u32 pid;              /* tgid */
    __u32 tid;
    __u32 status;           /* USDT_SITE_UNKNOWN */
    __u32 nargs;
    __u32 unreadable;       /* bit i: argument i could not be read */
    __u32 pad;
    char comm[16];
    __u64 args[USDT_MAX_ARGS];  /* extended to 64 bits by size and sign */
    struct usdt_string strings[USDT_MAX_ARGS];
};

_Static_assert(sizeof(struct usdt_arg_spec) == 16, "usdt_arg_spec has no hole");
_Static_assert(sizeof(struct usdt_site_key) == 16, "usdt_site_key has no hole");
_Static_assert(USDT_STRING_MAX % 8 == 0,
               "per-CPU arrays need events 8-byte aligned (bcc)");
_Static_assert(sizeof(struct usdt_site) == 8 + 16 * USDT_MAX_ARGS,
               "usdt_site has no hole");

#define USDT_SITE_UNKNOWN 0x1       /* no spec for (pid, ip) yet: no args */

/* Per-CPU counters: hits = streamed + stream_failed, exactly. */
enum usdt_counter {
    USDT_COUNTER_HITS = 0,
    USDT_COUNTER_STREAMED = 1,
    USDT_COUNTER_STREAM_FAILED = 2,
    USDT_COUNTER_UNKNOWN_SITE = 3,  /* hits sent without their arguments */
    USDT_COUNTER_COUNT = 4,
};

#endif
