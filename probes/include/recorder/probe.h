/* recorder/probe.h - one USDT probe per topic, guarded by its own semaphore.
 *
 * Emits a SystemTap SDT v3 note (the format tplist, bpftrace, bcc, perf and
 * gdb read) naming provider "recorder", probe <topic>, the topic's semaphore
 * and eight arguments, each in a fixed register: the address of the entry
 * just written, then copies of its words that in-kernel metrics need
 * (args[0], args[1], timestamp, tid/topic_id, arg_types/cpu/nargs/flags,
 * args[2], args[3]), so BPF
 * aggregates from registers without reading user memory. We write the
 * note ourselves instead of using <sys/sdt.h> so that semaphores stay per
 * topic without changing how the user's own SDT probes in the same file
 * compile. The probe site is the 1-byte `nop` (see ARCHITECTURE.md: this
 * kernel turns 5-byte nops into a slower call that clobbers the red zone).
 */
#ifndef RECORDER_PROBE_H
#define RECORDER_PROBE_H

#define RECORDER_STRINGIFY_(x) #x
#define RECORDER_STRINGIFY(x)  RECORDER_STRINGIFY_(x)

/* The kernel increments a semaphore while a uprobe with that reference
 * counter is attached in the process, so the check below is the only cost
 * of a probe that no tracer watches. */
#define RECORDER_SEMAPHORE(name) recorder_##name##_semaphore

#define RECORDER_PROBE_ARMED(name) \
    __builtin_expect(RECORDER_SEMAPHORE(name) != 0, 0)

#define RECORDER_PROBE_FIRE(name, entry)                                    \
    do {                                                                    \
    RECORDER_PROBE_PIN_(entry);                                             \
    __asm__ __volatile__(                                                   \
        "990: nop\n"                                                        \
        ".pushsection .note.stapsdt,\"\",\"note\"\n"                       \
        ".balign 4\n"                                                       \
        ".4byte 992f-991f, 994f-993f, 3\n"                                  \
        "991: .asciz \"stapsdt\"\n"                                         \
        "992: .balign 4\n"                                                  \
        "993: .8byte 990b\n"                                                \
        ".8byte _.stapsdt.base\n"                                           \
        ".8byte " RECORDER_STRINGIFY(RECORDER_SEMAPHORE(name)) "\n"         \
        ".asciz \"recorder\"\n"                                             \
        ".asciz \"" #name "\"\n"                                            \
        ".asciz \"8@%0 8@%1 8@%2 8@%3 8@%4 8@%5 8@%6 8@%7\"\n"              \
        "994: .balign 4\n"                                                  \
        ".popsection\n"                                                     \
        ".ifndef _.stapsdt.base\n"                                          \
        ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n" \
        ".weak _.stapsdt.base\n"                                            \
        ".hidden _.stapsdt.base\n"                                          \
        "_.stapsdt.base: .space 1\n"                                        \
        ".size _.stapsdt.base, 1\n"                                         \
        ".popsection\n"                                                     \
        ".endif\n"                                                          \
        : : RECORDER_PROBE_OPERANDS_(entry) : "memory");                  \
    } while (0)

/* Each argument always travels in the same register (PROBES.md, "USDT
 * probes"), so one BPF program serves every probe site without per-site
 * argument decoding. The copies are loaded only on the armed path, from
 * the entry just written (in L1): an unarmed probe pays nothing for them.
 * r8..r10 have no constraint letter: local register variables pin them. */
typedef unsigned long long __attribute__((__may_alias__)) recorder_probe_word_;
#define RECORDER_PROBE_WORD_(entry, offset) \
    (*(const recorder_probe_word_ *)((const char *)(entry) + (offset)))
#if defined(__x86_64__)
#define RECORDER_PROBE_OPERANDS_(entry)                                     \
    "a"(entry),                                     /* arg0 %rax entry */  \
    "d"(RECORDER_PROBE_WORD_(entry, 48)),           /* arg1 %rdx args[0] */\
    "c"(RECORDER_PROBE_WORD_(entry, 56)),           /* arg2 %rcx args[1] */\
    "S"(RECORDER_PROBE_WORD_(entry, 0)),            /* arg3 %rsi timestamp */\
    "D"(RECORDER_PROBE_WORD_(entry, 16)),           /* arg4 %rdi tid, topic_id */\
    "r"(recorder_r8_), "r"(recorder_r9_), "r"(recorder_r10_)
/* Declares the pinned registers, inside RECORDER_PROBE_FIRE's block. The
 * words bpftrace 0.17 cannot name (it stops at arg5) come last. */
#define RECORDER_PROBE_PIN_(entry)                                          \
    register unsigned long long recorder_r8_ __asm__("r8") =               \
        RECORDER_PROBE_WORD_(entry, 24);    /* arg5 %r8 types, cpu, nargs, flags */\
    register unsigned long long recorder_r9_ __asm__("r9") =               \
        RECORDER_PROBE_WORD_(entry, 64);    /* arg6 %r9 args[2] */         \
    register unsigned long long recorder_r10_ __asm__("r10") =             \
        RECORDER_PROBE_WORD_(entry, 72)     /* arg7 %r10 args[3] */
#else
#error "recorder probes: only x86-64 is supported (fixed argument registers)"
#endif

#endif /* RECORDER_PROBE_H */
