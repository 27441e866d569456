/* configure.c - the seed library's configure hooks, recorder_sort and
 * recorder_tick.
 *
 * While nothing is configured, dumps and traces print their default line
 * straight to stderr (dump.c). Once a program sets an output, a show or a
 * format function, or calls recorder_sort, each entry goes through
 * recorder_sink_entry: message formatted here, then format(show, output,
 * ...). The default format rebuilds exactly the default line, so setting
 * only an output or a show changes where lines go, not what they say.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <stdio.h>
#include <string.h>

recorder_type_fn recorder_custom_types[256];

static unsigned default_show(const char *text, size_t length, void *output);
static void default_format(recorder_show_fn show, void *output,
                           const char *label, const char *location,
                           uintptr_t order, uintptr_t timestamp,
                           const char *message);

static struct recorder_sink configured = { default_format, default_show, NULL };
static _Atomic int customized;

/* The entry being shown, for the default format's thread id (the seed's
 * format function has no parameter for it). */
static __thread const struct recorder_record *showing;

uintptr_t recorder_tick(void)
{
    return (uintptr_t)recorder_clock_now();
}

static unsigned default_show(const char *text, size_t length, void *output)
{
    if (output) {
        FILE *file = output;
        size_t shown = fwrite(text, 1, length, file);
        fputc('\n', file);
        return (unsigned)shown;
    }
    /* One write per line, as the default dump does: lines of concurrent
     * traces stay whole. */
    char line[1400];
    if (length > sizeof(line) - 1)
        length = sizeof(line) - 1;
    memcpy(line, text, length);
    line[length] = '\n';
    recorder_write_all(2, line, length + 1);
    return (unsigned)length;
}

static void default_format(recorder_show_fn show, void *output,
                           const char *label, const char *location,
                           uintptr_t order, uintptr_t timestamp,
                           const char *message)
{
    (void)order;
    char line[1400];
    unsigned tid = showing ? showing->tid : 0;
    int length = snprintf(line, sizeof(line), "%s: [%llu.%09llu %u] %s: %s",
                          location, (unsigned long long)timestamp / 1000000000ull,
                          (unsigned long long)timestamp % 1000000000ull, tid,
                          label, message);
    if (length < 0)
        return;
    if ((size_t)length > sizeof(line) - 1)
        length = sizeof(line) - 1;
    show(line, (size_t)length, output);
}

const struct recorder_sink *recorder_configured_sink(void)
{
    return atomic_load_explicit(&customized, memory_order_acquire)
        ? &configured : NULL;
}

void recorder_sink_entry(const struct recorder_sink *sink,
                         const struct recorder_topic *topic,
                         const struct recorder_record *entry, __s64 trace,
                         uintptr_t order)
{
    char message[1024], where[256];
    if (!sink)
        sink = &configured;
    recorder_format_entry_traced(entry, message, sizeof(message), trace);
    if (recorder_read_string(entry->where, where, sizeof(where)) < 0)
        strcpy(where, "?");
    const struct recorder_record *outer = showing;
    showing = entry;
    sink->format(sink->show ? sink->show : configured.show, sink->output,
                 topic->name, where, order, entry->timestamp,
                 message);
    showing = outer;
}

static void note_customized(void)
{
    int custom = configured.format != default_format
        || configured.show != default_show || configured.output != NULL;
    atomic_store_explicit(&customized, custom, memory_order_release);
}

void *recorder_configure_output(void *output)
{
    void *previous = configured.output;
    configured.output = output;
    note_customized();
    RECORD(recorder_core, "Configure output %p from %p", output, previous);
    return previous;
}

recorder_show_fn recorder_configure_show(recorder_show_fn show)
{
    recorder_show_fn previous = configured.show;
    configured.show = show ? show : default_show;
    note_customized();
    RECORD(recorder_core, "Configure show %p from %p", (void *)show,
           (void *)previous);
    return previous;
}

recorder_format_fn recorder_configure_format(recorder_format_fn format)
{
    recorder_format_fn previous = configured.format;
    configured.format = format ? format : default_format;
    note_customized();
    RECORD(recorder_core, "Configure format %p from %p", (void *)format,
           (void *)previous);
    return previous;
}

recorder_type_fn recorder_configure_type(uint8_t id, recorder_type_fn type)
{
    recorder_type_fn previous = recorder_custom_types[id];
    recorder_custom_types[id] = type;
    RECORD(recorder_core, "Configure type '%c' to %p from %p", (char)id,
           (void *)type, (void *)previous);
    return previous;
}

unsigned recorder_sort(const char *pattern, recorder_format_fn format,
                       recorder_show_fn show, void *output)
{
    struct recorder_sink sink = {
        .format = format ? format : configured.format,
        .show = show ? show : configured.show,
        .output = output,
    };
    return recorder_dump_through(pattern, &sink);
}
