/* seed_api.c - a program written only against the seed library's
 * documented API (c3d/recorder's recorder.h and man3 pages), so that
 * tests/test_core_seed_api.py checks it compiles unchanged and behaves as
 * the seed documents. One mode per argument:
 *
 *   format   %x of floats, star widths, a custom %E, %+E; dump of Special
 *   sort     recorder_sort with a format and show of its own; output,
 *            show and format configured for recorder_dump_for
 *   tweak    RECORDER_TWEAK_DEFINE / RECORDER_TWEAK (RECORDER_TWEAKS)
 *   fast     record_fast / RECORD_FAST reuse the previous timestamp
 *   tick     recorder_tick() and RECORDER_HZ measure a 23 ms sleep
 *   signal   recorder_dump_on_signal(SIGUSR1): dumps, the program goes on
 *   version  RECORDER_CURRENT_VERSION and the RECORDER_VERSION macros
 *   timing   RECORD_TIMING_BEGIN/END around 23 loops of 2 units, 1 ms each
 *   background  recorder_background_dump prints new records of `bg` as
 *            they come, each once; nothing after recorder_background_dump_stop
 *   order    recorder_order counts records across topics; the `order` a
 *            format function receives is recorder_order when each was made
 */
#include "recorder.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

RECORDER(Special, 64, "Special operations to the recorder");
RECORDER(alpha, 32, "First topic for sorting");
RECORDER(beta, 32, "Second topic for sorting");
RECORDER(loops, 64, "Loops the tweak asks for");
RECORDER(MOVE, 64, "Fast records");
RECORDER(bg, 64, "Records the background dump prints");
RECORDER(timing, 64, "Rates of a timed block");
RECORDER_TWEAK_DEFINE(loop_count, 3, "How many loops to record");

typedef struct example { int x; int y; int z; } example_t;

static size_t show_struct(intptr_t trace, const char *format, char *buffer,
                          size_t length, uintptr_t data)
{
    example_t *e = (example_t *)data;
    (void)format;
    return trace
        ? (size_t)snprintf(buffer, length, "example(%d, %d, %d)",
                           e->x, e->y, e->z)
        : (size_t)snprintf(buffer, length, "example(%p)", (void *)e);
}

static int format_mode(void)
{
    static example_t x1 = { 1, 2, 3 };
    static example_t x2 = { 42, -42, 42 * 42 };
    recorder_configure_type('E', show_struct);
    record(Special, "Float    X 3.1415 = %x", 3.1415f);
    record(Special, "Double   X 3.1415 = %x", 3.1415);
    record(Special, "Double  LX 3.1415 = %lx", 3.1415);
    record(Special, "Float      3.1415 = %f", 3.1415f);
    record(Special, "Format '%8s' '%-8s' '%8.2f' '%-8.2f'",
           "abc", "def", 1.2345, 2.3456);
    record(Special, "Format '%*s' '%*.*f'", 8, "abc", 8, 2, 1.2345);
    record(Special, "Struct dump %E then %E", &x1, &x2);
    record(Special, "Safe struct %+E", &x1);
    printf("x1=%p x2=%p\n", (void *)&x1, (void *)&x2);
    fflush(stdout);
    return recorder_dump_for("Special") == 8 ? 0 : 1;
}

static char shown[4096];
static size_t shown_length;

static unsigned show_into_buffer(const char *text, size_t length, void *arg)
{
    unsigned *calls = arg;
    (*calls)++;
    if (shown_length + length + 2 < sizeof(shown)) {
        memcpy(shown + shown_length, text, length);
        shown_length += length;
        shown[shown_length++] = '\n';
    }
    return (unsigned)length;
}

static void label_format(recorder_show_fn show, void *output,
                         const char *label, const char *location,
                         uintptr_t order, uintptr_t timestamp,
                         const char *message)
{
    char line[512];
    int length = snprintf(line, sizeof(line), "%s|%s|%lu|%s|%s", label,
                          strrchr(location, ':') ? "located" : "nowhere",
                          (unsigned long)order, timestamp ? "timed" : "zero",
                          message);
    show(line, (size_t)length, output);
}

static unsigned prefixed_show(const char *text, size_t length, void *output)
{
    return (unsigned)fprintf(output, "SHOW %.*s\n", (int)length, text);
}

static int sort_mode(void)
{
    unsigned calls = 0;
    for (int i = 0; i < 3; i++) {
        record(alpha, "alpha %d", i);
        record(beta, "beta %d", i);
    }
    unsigned count = recorder_sort("alpha|beta", label_format,
                                   show_into_buffer, &calls);
    printf("sorted %u shown %u\n%s", count, calls, shown);

    /* Default format and show, output on stdout. */
    void *previous = recorder_configure_output(stdout);
    printf("previous output %s\n", previous ? "set" : "NULL");
    fflush(stdout);
    recorder_dump_for("beta");
    fflush(stdout);
    /* A show of our own, then a format of our own as well. */
    recorder_show_fn old_show = recorder_configure_show(prefixed_show);
    recorder_dump_for("alpha");
    recorder_format_fn old_format = recorder_configure_format(label_format);
    recorder_dump_for("alpha");
    printf("defaults returned %s\n", old_show && old_format ? "yes" : "no");
    /* Back to the defaults: stderr. */
    recorder_configure_format(old_format);
    recorder_configure_show(old_show);
    recorder_configure_output(previous);
    fflush(stdout);
    recorder_dump_for("beta");
    return 0;
}

static int tweak_mode(void)
{
    for (int i = 0; i < RECORDER_TWEAK(loop_count); i++)
        record(loops, "loop %d of %d", i, (int)RECORDER_TWEAK(loop_count));
    printf("tweak %ld\n", (long)RECORDER_TWEAK(loop_count));
    return recorder_dump_for("loops") == (unsigned)RECORDER_TWEAK(loop_count)
        ? 0 : 1;
}

static int fast_mode(void)
{
    record(MOVE, "slow %d", 0);
    for (int i = 1; i <= 3; i++)
        record_fast(MOVE, "fast %d", i);
    RECORD_FAST(MOVE, "FAST %d", 4);
    return recorder_dump_for("MOVE") == 5 ? 0 : 1;
}

static int tick_mode(void)
{
    uintptr_t start = recorder_tick();
    struct timespec pause = { 0, 23 * 1000 * 1000 };
    nanosleep(&pause, NULL);
    uintptr_t duration = recorder_tick() - start;
    printf("elapsed_us %.0f\n", (double)duration * 1e6 / RECORDER_HZ);
    printf("hz %llu\n", (unsigned long long)RECORDER_HZ);
    return 0;
}

static int signal_mode(void)
{
    recorder_dump_on_signal(SIGUSR1);
    record(Special, "before the signal %d", 23);
    raise(SIGUSR1);
    printf("alive after SIGUSR1\n");
    return 0;
}

static int background_mode(void)
{
    struct timespec pause = { 0, 2 * 1000 * 1000 };
    recorder_background_dump("bg");
    for (int i = 0; i < 23; i++) {
        record(bg, "bg %d", i);
        if (i % 5 == 0)
            nanosleep(&pause, NULL);    /* some passes see a few records */
    }
    recorder_background_dump_stop();
    record(bg, "after the stop");
    printf("stopped\n");
    return 0;
}

static int timing_mode(void)
{
    struct timespec pause = { 0, 1000 * 1000 };
    RECORDER_TRACE(timing) = 5;         /* a record every 5 ms at most */
    for (int i = 0; i < 23; i++) {
        RECORD_TIMING_BEGIN(timing);
        nanosleep(&pause, NULL);
        RECORD_TIMING_END(timing, "moved", "units", 2);
    }
    RECORDER_TRACE(timing) = 0;
    return 0;
}

static recorder_entry ordered[8];
static unsigned ordered_count;

/* Keeps what the seed's format function receives, as a recorder_entry. */
static void keep_order(recorder_show_fn show, void *output, const char *label,
                       const char *location, uintptr_t order,
                       uintptr_t timestamp, const char *message)
{
    (void)show; (void)output; (void)message;
    if (ordered_count < 8) {
        ordered[ordered_count] = (recorder_entry) {
            .format = label, .order = order, .timestamp = timestamp,
            .where = location,
        };
        ordered_count++;
    }
}

static int order_mode(void)
{
    /* A topic's first record on a CPU makes its ring, which the core
     * records (recorder_core): that counts too, so make them first. */
    record(alpha, "first");
    record(beta, "first");
    uintptr_t before = recorder_order;
    for (int i = 0; i < 3; i++) {
        record(beta, "beta %d", i);
        record(alpha, "alpha %d", i);
    }
    uintptr_t after = recorder_order;
    printf("recorded %lu\n", (unsigned long)(after - before));
    recorder_sort("alpha|beta", keep_order, NULL, NULL);
    for (unsigned i = 0; i < ordered_count; i++)
        if (ordered[i].order >= before)
            printf("%s %lu\n", ordered[i].format,
                   (unsigned long)(ordered[i].order - before));
    /* The seed's own record functions take their order this way. */
    uintptr_t mine = recorder_ring_fetch_add(recorder_order, 1);
    printf("fetched %s, then %lu more\n", mine == after ? "the count" : "else",
           (unsigned long)(recorder_order - after));
    return 0;
}

static int version_mode(void)
{
    printf("version %u.%u.%u\n",
           RECORDER_VERSION_MAJOR(RECORDER_CURRENT_VERSION),
           RECORDER_VERSION_MINOR(RECORDER_CURRENT_VERSION),
           RECORDER_VERSION_PATCH(RECORDER_CURRENT_VERSION));
    printf("at least 1.0.5: %s\n",
           RECORDER_CURRENT_VERSION >= RECORDER_VERSION(1, 0, 5) ? "yes" : "no");
    return 0;
}

int main(int argc, char **argv)
{
    static const struct { const char *name; int (*run)(void); } modes[] = {
        { "format", format_mode }, { "sort", sort_mode },
        { "tweak", tweak_mode }, { "fast", fast_mode },
        { "tick", tick_mode }, { "signal", signal_mode },
        { "version", version_mode }, { "background", background_mode },
        { "timing", timing_mode }, { "order", order_mode },
    };
    for (size_t i = 0; argc > 1 && i < sizeof(modes) / sizeof(*modes); i++)
        if (strcmp(argv[1], modes[i].name) == 0)
            return modes[i].run();
    fprintf(stderr, "usage: seed_api format|sort|tweak|fast|tick|signal|"
            "version|background|timing|order\n");
    return 2;
}
