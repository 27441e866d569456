/* dump.c - print rings in time order, at will, at exit and on fatal signals.
 *
 * Merges every shard of the chosen topics by timestamp without allocating
 * (a dump runs in signal handlers), reading each entry seqlock-style: an
 * entry rewritten while we copy it is skipped, never shown torn.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_DUMP_SHARDS 4096

struct cursor {
    const struct recorder_topic *topic;
    const struct recorder_shard *shard;
    __u64 next;         /* index of the next entry to consider */
    __u64 end;          /* head when the dump started */
    int shown;          /* selected; the others only count for `order` */
};

static struct cursor cursors[MAX_DUMP_SHARDS];
static atomic_flag dumping = ATOMIC_FLAG_INIT;
static const char *dump_pattern;        /* RECORDER_DUMP, or "all" */
static unsigned char dump_selected[RECORDER_MAX_TOPICS];   /* by topic id */
static regex_t dump_regex;              /* RECORDER_DUMP, compiled once */
static int dump_pattern_compiled;


/* Where this dump's lines go, if not the default line (recorder_sort, the
 * configure hooks); set while `dumping` is held. */
static const struct recorder_sink *dump_sink;

static void print_entry(const struct recorder_topic *topic,
                        const struct recorder_record *entry,
                        const struct recorder_sink *sink, __s64 trace,
                        uintptr_t order)
{
    if (sink) {
        recorder_sink_entry(sink, topic, entry, trace, order);
        return;
    }
    char message[1024], where[256], line[1400];
    recorder_format_entry_traced(entry, message, sizeof(message), trace);
    if (recorder_read_string(entry->where, where, sizeof(where)) < 0)
        strcpy(where, "?");
    int length = snprintf(line, sizeof(line), "%s: [%llu.%09llu %u] %s: %s\n",
                          where, entry->timestamp / 1000000000ull,
                          entry->timestamp % 1000000000ull, entry->tid,
                          topic->name, message);
    if (length > (int)sizeof(line) - 1) {
        length = sizeof(line) - 1;
        line[length - 1] = '\n';
    }
    if (length > 0)
        recorder_write_all(2, line, (size_t)length);
}

void recorder_trace_show(const struct recorder_topic *topic,
                         const struct recorder_record *entry, uintptr_t order)
{
    print_entry(topic, entry, recorder_configured_sink(), topic->trace, order);
}

void recorder_trace_record(struct recorder_topic *topic,
                           struct recorder_record *entry)
{
    /* Named channels only (RECORDER_TRACES="topic=x,y"): export, no print. */
    if (recorder_export_entry(topic, entry)
        && topic->trace == RECORDER_CHAN_MAGIC)
        return;
    const struct recorder_sink *sink = recorder_configured_sink();
    /* Just committed: every record counted so far came before it (exact
     * unless other threads record meanwhile). */
    print_entry(topic, entry, sink, topic->trace,
                sink ? recorder_order_count() - 1 : 0);
}

/* Which topics a dump shows: those a regex matches, those RECORDER_DUMP
 * selected (no regex: signal handlers must not allocate), or all. */
enum selection { SELECT_ALL, SELECT_REGEX, SELECT_RECORDER_DUMP };

static int selected(const struct recorder_topic *topic, enum selection how,
                    const regex_t *regex)
{
    switch (how) {
    case SELECT_REGEX:
        return recorder_name_matches(regex, topic->name);
    case SELECT_RECORDER_DUMP:
        return topic->id < RECORDER_MAX_TOPICS && dump_selected[topic->id];
    default:
        return 1;
    }
}

static unsigned dump_topics(enum selection how, const regex_t *regex,
                            const struct recorder_sink *sink)
{
    if (atomic_flag_test_and_set(&dumping)) {
        recorder_error("recorder: a dump is already in progress");
        return 0;
    }
    dump_sink = sink ? sink : recorder_configured_sink();
    unsigned count = 0, shown = 0;
    for (struct recorder_topic *topic = recorder_registry.topics; topic;
         topic = topic->next) {
        int shown = selected(topic, how, regex);
        for (unsigned s = 0; s < RECORDER_MAX_SHARDS; s++) {
            const struct recorder_shard *shard = topic->shards[s];
            if (!shard || count == MAX_DUMP_SHARDS)
                continue;
            __u64 head = atomic_load_explicit((_Atomic __u64 *)&shard->head,
                                              memory_order_acquire);
            cursors[count++] = (struct cursor) {
                .topic = topic, .shard = shard,
                .next = head > shard->keep ? head - shard->keep : 0,
                .end = head, .shown = shown,
            };
        }
    }

    /* Repeatedly print the oldest next entry among all cursors. Its order
     * (the seed's recorder_order when it was made) is how many entries
     * every shard holds before it, overwritten ones included: the sum of
     * the cursors' indices. Unselected topics' cursors advance too, only
     * to keep that count. */
    for (;;) {
        struct cursor *oldest = NULL;
        uintptr_t order = 0;
        struct recorder_record oldest_entry, candidate;
        for (unsigned c = 0; c < count; c++) {
            struct cursor *cursor = &cursors[c];
            while (cursor->next < cursor->end
                   && !recorder_read_entry(cursor->shard, cursor->next, &candidate))
                cursor->next++;     /* overwritten since we started */
            if (cursor->next == cursor->end)
                continue;
            if (!oldest || candidate.timestamp < oldest_entry.timestamp) {
                oldest = cursor;
                oldest_entry = candidate;
            }
        }
        if (!oldest)
            break;
        for (unsigned c = 0; c < count; c++)
            order += cursors[c].next;
        if (oldest->shown) {
            print_entry(oldest->topic, &oldest_entry, dump_sink, 0, order);
            shown++;
        }
        oldest->next++;
    }

    /* Per topic: how much was recorded and how much the ring overwrote. */
    const struct recorder_topic *topic = NULL;
    __u64 recorded = 0, overwritten = 0;
    for (unsigned c = 0; c <= count; c++) {
        if (c == count || cursors[c].topic != topic) {
            if (topic && overwritten)
                recorder_error("recorder: %s: %llu records, %llu overwritten",
                               topic->name,
                               (unsigned long long)recorded,
                               (unsigned long long)overwritten);
            if (c == count)
                break;
            topic = cursors[c].shown ? cursors[c].topic : NULL;
            recorded = overwritten = 0;
        }
        __u64 end = cursors[c].end, keep = cursors[c].shard->keep;
        recorded += end;
        overwritten += end > keep ? end - keep : 0;
    }
    atomic_flag_clear(&dumping);
    return shown;
}

/* A dump keeps nothing from one call to the next: a child forked while
 * another thread dumped just needs the flag down (waiting for that dump
 * before fork could take as long as stderr is blocked). */
void recorder_dump_after_fork(void)
{
    atomic_flag_clear(&dumping);
}

unsigned recorder_dump_for(const char *pattern)
{
    return recorder_dump_through(pattern, NULL);
}

unsigned recorder_dump_through(const char *pattern,
                               const struct recorder_sink *sink)
{
    if (!pattern || strcmp(pattern, "all") == 0)
        return dump_topics(SELECT_ALL, NULL, sink);
    regex_t regex;
    int status = recorder_compile_name_regex(&regex, pattern);
    if (status != 0) {
        char reason[128];
        regerror(status, &regex, reason, sizeof(reason));
        recorder_error("recorder: invalid topic pattern '%s' to dump: %s",
                       pattern, reason);
        return 0;
    }
    unsigned shown = dump_topics(SELECT_REGEX, &regex, sink);
    regfree(&regex);
    return shown;
}

unsigned recorder_dump(void)
{
    return dump_topics(SELECT_ALL, NULL, NULL);
}

/* ------------------------------------------------------------------------ */
/* Signals                                                                  */
/* ------------------------------------------------------------------------ */

static const int common_signals[] = {
    SIGQUIT, SIGILL, SIGABRT, SIGBUS, SIGSEGV, SIGFPE, SIGSYS, SIGXCPU,
    SIGXFSZ,
};
static struct sigaction previous[NSIG];
static unsigned long long fatal_mask;   /* bit n: signal n is re-raised */

static void on_signal(int signal_number, siginfo_t *info, void *context)
{
    (void)context;
    RECORD(recorder_signals, "Received signal %d code %d address %p",
           signal_number, info ? info->si_code : 0,
           info ? info->si_addr : NULL);
    recorder_error("recorder: received signal %d (%s), dumping",
                   signal_number, sigabbrev_np(signal_number));
    dump_topics(SELECT_RECORDER_DUMP, NULL, NULL);
    if (!(fatal_mask & (1ull << signal_number)))
        return;
    /* Hand the signal back to whoever had it, or to the default action,
     * so the process still dies by it (exit status, core file). */
    sigaction(signal_number, &previous[signal_number], NULL);
    if (previous[signal_number].sa_handler == SIG_IGN)
        signal(signal_number, SIG_DFL);
    /* A fault the kernel raised (si_code > 0) happens again when the
     * faulting instruction re-runs on return, with its real siginfo (the
     * address) for the previous handler and the core file. Anything sent
     * (kill, abort's tgkill) is sent again. */
    int fault = signal_number == SIGSEGV || signal_number == SIGBUS
        || signal_number == SIGILL || signal_number == SIGFPE;
    if (fault && info && info->si_code > 0)
        return;
    raise(signal_number);
}

/* A stack overflow raises SIGSEGV with no stack left to run the handler
 * on: give the calling thread an alternate stack unless it has one. */
#define ALTERNATE_STACK_BYTES (64 * 1024)

static void ensure_alternate_stack(void)
{
    stack_t current;
    if (sigaltstack(NULL, &current) != 0 || !(current.ss_flags & SS_DISABLE))
        return;
    void *memory = mmap(NULL, ALTERNATE_STACK_BYTES, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (memory == MAP_FAILED)
        return;
    stack_t stack = { .ss_sp = memory, .ss_size = ALTERNATE_STACK_BYTES };
    if (sigaltstack(&stack, NULL) != 0)
        munmap(memory, ALTERNATE_STACK_BYTES);
}

void recorder_dump_on_common_signals(unsigned add, unsigned remove)
{
    unsigned long long chosen = (unsigned long long)add;
    unsigned long long fatal = 0;
    recorder_init();
    ensure_alternate_stack();
    for (size_t i = 0; i < sizeof(common_signals) / sizeof(int); i++)
        fatal |= 1ull << common_signals[i];
    chosen = (chosen | fatal) & ~(unsigned long long)remove;
    for (int signal_number = 1; signal_number < 32; signal_number++) {
        if (!(chosen & (1ull << signal_number)))
            continue;
        struct sigaction action = { 0 }, old;
        action.sa_sigaction = on_signal;
        action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        if (sigaction(signal_number, &action, &old) != 0)
            continue;
        /* Installed twice: keep the handler from before the first time. */
        if (!((old.sa_flags & SA_SIGINFO) && old.sa_sigaction == on_signal))
            previous[signal_number] = old;
        if (fatal & (1ull << signal_number))
            fatal_mask |= 1ull << signal_number;
        RECORD(recorder_signals, "Dump on signal %d installed",
               signal_number);
    }
}

void recorder_dump_on_signal(int signal_number)
{
    if (signal_number <= 0 || signal_number >= 32)
        return;
    unsigned common = 0;
    for (size_t i = 0; i < sizeof(common_signals) / sizeof(int); i++)
        common |= 1u << common_signals[i];
    unsigned only = 1u << signal_number;
    recorder_dump_on_common_signals(only, common & ~only);
}

static void dump_at_exit(void)
{
    dump_topics(SELECT_RECORDER_DUMP, NULL, NULL);
}

/* Decides once, when a topic is added, whether signal and exit dumps show
 * it, so that they run no regex (it allocates). */
void recorder_dump_select(const struct recorder_topic *topic)
{
    if (topic->id >= RECORDER_MAX_TOPICS)
        return;
    dump_selected[topic->id] = (unsigned char)(!dump_pattern_compiled
        || recorder_name_matches(&dump_regex, topic->name));
}

void recorder_dump_at_exit_init(void)
{
    dump_pattern = secure_getenv("RECORDER_DUMP");
    if (!dump_pattern || !*dump_pattern) {
        dump_pattern = "all";
        return;
    }
    if (strcmp(dump_pattern, "all") == 0) {
        atexit(dump_at_exit);
        return;
    }
    int status = recorder_compile_name_regex(&dump_regex, dump_pattern);
    if (status != 0) {
        char reason[128];
        regerror(status, &dump_regex, reason, sizeof(reason));
        recorder_error("recorder: invalid RECORDER_DUMP pattern '%s': %s; "
                       "no dump at exit, all topics on a fatal signal",
                       dump_pattern, reason);
        dump_pattern = "all";
        return;
    }
    /* Compiled once, kept for every topic added later. */
    dump_pattern_compiled = 1;
    atexit(dump_at_exit);
}
