/* seed_trace.c - the seed library's recorder_trace_entry, called as a
 * program written for c3d/recorder calls it: with a recorder_info and a
 * recorder_entry of its own, directly or through a hook of the seed's
 * type. tests/test_core_seed_trace.py checks what it prints. Modes:
 *
 *   hook     traces `traced` through a wrapper when its trace is on (as the
 *            seed's record functions do); prints "hook" or "off" on stdout
 *   format   a format function of our own receives label, location,
 *            order, timestamp and message of two entries, with and without
 *            the seed's "file:line:" head
 */
#include "recorder.h"

#include <stdio.h>
#include <string.h>

RECORDER(traced, 16, "Entries traced by hand");

/* The seed's recorder.h declares it so: a redeclaration compiles only if
 * ours has the same type. */
extern void recorder_trace_entry(recorder_info *info, recorder_entry *entry);

/* A hook of the seed's own type, around the library's function. */
typedef void (*trace_hook)(recorder_info *info, recorder_entry *entry);
static trace_hook next_hook = recorder_trace_entry;

static void counting_hook(recorder_info *info, recorder_entry *entry)
{
    printf("hook %s order %lu\n", info->name, (unsigned long)entry->order);
    fflush(stdout);
    next_hook(info, entry);
}

static uintptr_t double_arg(double value)
{
    union { double d; uintptr_t u; } bits = { value };
    return bits.u;
}

static recorder_entry make_entry(void)
{
    recorder_entry entry = {
        .format = "seed_trace.c:42:value %d name %s ratio %.2f",
        .order = 7,
        .timestamp = 1234567890,
        .where = "make_entry",
        .args = { 23, (uintptr_t)"str", double_arg(0.5), 0 },
    };
    return entry;
}

static void show_format(recorder_show_fn show, void *output,
                        const char *label, const char *location,
                        uintptr_t order, uintptr_t timestamp,
                        const char *message)
{
    char line[512];
    int length = snprintf(line, sizeof(line), "%s|%s|%lu|%lu|%s", label,
                          location, (unsigned long)order,
                          (unsigned long)timestamp, message);
    show(line, (size_t)length, output);
}

static int hook_mode(void)
{
    recorder_entry entry = make_entry();
    if (RECORDER_TRACE(traced)) {
        counting_hook(RECORDER_INFO(traced), &entry);
    } else {
        printf("off\n");
    }
    return 0;
}

static int format_mode(void)
{
    recorder_configure_output(stdout);
    recorder_configure_format(show_format);
    RECORDER_TRACE(traced) = 1;
    recorder_entry entry = make_entry();
    recorder_trace_entry(RECORDER_INFO(traced), &entry);
    recorder_entry bare = {
        .format = "%u%% of %x",
        .order = 8,
        .timestamp = recorder_tick(),
        .where = "format_mode",
        .args = { 99, 0xbeef, 0, 0 },
    };
    recorder_trace_entry(RECORDER_INFO(traced), &bare);
    /* The seed's later parts of a long entry have no format: not shown. */
    recorder_entry later = { .format = NULL, .order = 9 };
    recorder_trace_entry(RECORDER_INFO(traced), &later);
    printf("done\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "hook") == 0)
        return hook_mode();
    if (argc == 2 && strcmp(argv[1], "format") == 0)
        return format_mode();
    fprintf(stderr, "usage: %s hook|format\n", argv[0]);
    return 2;
}
