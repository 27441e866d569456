/* recorder/probe.h - one USDT probe per topic, guarded by its own semaphore.
 *
 * Emits a SystemTap SDT v3 note (the format tplist, bpftrace, bcc, perf and
 * gdb read) naming provider "recorder", probe <topic>, the topic's semaphore
 * and one argument: the address of the entry just written. We write the
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
        ".asciz \"8@%0\"\n"                                                 \
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
        : : RECORDER_PROBE_REGISTER(entry) : "memory")

/* The entry's address always travels in the same register, so one BPF
 * program serves every probe site without per-site argument decoding. */
#if defined(__x86_64__)
#define RECORDER_PROBE_REGISTER(entry) "a"(entry)      /* 8@%rax */
#else
#define RECORDER_PROBE_REGISTER(entry) "r"(entry)
#endif

#endif /* RECORDER_PROBE_H */
