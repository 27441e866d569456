/* seed_chans.c - a program written only against the seed library's
 * documented API (c3d/recorder's recorder.h): its shared-memory channels,
 * recorder_info / recorder_list and recorder_append. tests/test_core_chans.py
 * runs it; one mode per argument:
 *
 *   write FILE   makes FILE with channels x (23 reals, ring 64) and count
 *                (23 signed into a ring of 16), prints "ready", then for
 *                each line "more" on stdin writes 5 more x and prints
 *                "wrote"; exits at end of input
 *   read FILE    opens FILE, shows every channel and reads it all with its
 *                own index; with "again" lines on stdin, reads what came
 *                since, with the same index
 *   shared FILE  reads x twice through the index kept in the file
 *   probe FILE   opens whatever FILE holds and reads every channel it finds
 *                (for damaged files: must end normally)
 *   replace FILE opens FILE, makes a new FILE, shows recorder_chans_valid
 *   export       records into topic `values` (RECORDER_TRACES names its
 *                arguments) and reads the channels of recorder_export_file()
 *   info         recorder_list, RECORDER_INFO, recorder_append* and
 *                recorder_activate, then a dump of topic `appended`
 */
#include "recorder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

RECORDER(values, 64, "Values exported as channels");
RECORDER(appended, 64, "Records made with recorder_append");
RECORDER_TWEAK_DEFINE(seed_chans_tweak, 23, "A tweak to activate again");

static const char *type_names[] = {
    "NONE", "INVALID", "SIGNED", "UNSIGNED", "REAL",
};

static void show_value(recorder_type type, recorder_data value)
{
    if (type == RECORDER_REAL)
        printf(" %g", value.real_value);
    else if (type == RECORDER_SIGNED)
        printf(" %ld", (long)value.signed_value);
    else
        printf(" %lu", (unsigned long)value.unsigned_value);
}

/* Reads what `chan` holds from `*reader`; prints the values, and checks
 * the timestamps never decrease. */
static void read_values(recorder_chan_p chan, ringidx_t *reader)
{
    recorder_data data[2 * 128];
    size_t readable = recorder_chan_readable(chan, reader);
    size_t count = recorder_chan_read(chan, data, 128, reader);
    int ordered = 1;
    printf("%s readable %zu read %zu:", recorder_chan_name(chan), readable,
           count);
    for (size_t i = 0; i < count; i++) {
        show_value(recorder_chan_type(chan), data[2 * i + 1]);
        if (i && data[2 * i].unsigned_value < data[2 * i - 2].unsigned_value)
            ordered = 0;
    }
    printf("%s\n", ordered ? "" : " (timestamps out of order)");
}

static int write_mode(const char *file)
{
    recorder_data min = { .real_value = -1 }, max = { .real_value = 12 };
    recorder_chans_p chans = recorder_chans_new(file);
    if (!chans)
        return 1;
    recorder_chan_p x = recorder_chan_new(chans, RECORDER_REAL, 64, "x",
                                          "The x value", "m", min, max);
    min.signed_value = -100;
    max.signed_value = 400;
    recorder_chan_p count = recorder_chan_new(chans, RECORDER_SIGNED, 16,
                                              "count", "Squares less 100",
                                              "items", min, max);
    if (!x || !count)
        return 1;
    for (int i = 0; i < 23; i++) {
        recorder_data item[2] = { { .unsigned_value = recorder_tick() },
                                  { .real_value = i * 0.5 } };
        recorder_chan_write(x, item, 1);
        item[1].signed_value = i * i - 100;
        recorder_chan_write(count, item, 1);
    }
    printf("ready\n");
    fflush(stdout);
    char line[64];
    int next = 23;
    while (fgets(line, sizeof(line), stdin)) {
        for (int i = 0; i < 5; i++, next++) {
            recorder_data item[2] = { { .unsigned_value = recorder_tick() },
                                      { .real_value = next * 0.5 } };
            recorder_chan_write(x, item, 1);
        }
        printf("wrote\n");
        fflush(stdout);
    }
    recorder_chans_delete(chans);
    return 0;
}

static int read_mode(const char *file)
{
    recorder_chans_p chans = recorder_chans_open(file);
    if (!chans) {
        printf("cannot open\n");
        return 1;
    }
    printf("valid %d\n", recorder_chans_valid(chans));
    printf("all:");
    for (recorder_chan_p chan = recorder_chan_find(chans, ".*", NULL); chan;
         chan = recorder_chan_find(chans, ".*", chan))
        printf(" %s", recorder_chan_name(chan));
    printf("\n");
    recorder_chan_p x = recorder_chan_find(chans, "X", NULL);
    recorder_chan_p count = recorder_chan_find(chans, "c.*", NULL);
    printf("none %s\n", recorder_chan_find(chans, "y", NULL) ? "found" : "NULL");
    if (!x || !count)
        return 1;
    printf("x '%s' '%s' %s size %zu min %g max %g\n",
           recorder_chan_description(x), recorder_chan_unit(x),
           type_names[recorder_chan_type(x)], recorder_chan_size(x),
           recorder_chan_min(x).real_value, recorder_chan_max(x).real_value);
    printf("count '%s' '%s' %s size %zu min %ld max %ld\n",
           recorder_chan_description(count), recorder_chan_unit(count),
           type_names[recorder_chan_type(count)], recorder_chan_size(count),
           (long)recorder_chan_min(count).signed_value,
           (long)recorder_chan_max(count).signed_value);
    ringidx_t x_reader = 0, count_reader = 0;
    read_values(x, &x_reader);
    read_values(count, &count_reader);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof(line), stdin)) {
        read_values(x, &x_reader);
        fflush(stdout);
    }
    recorder_chans_close(chans);
    return 0;
}

static int shared_mode(const char *file)
{
    recorder_chans_p chans = recorder_chans_open(file);
    recorder_chan_p x = chans ? recorder_chan_find(chans, "x", NULL) : NULL;
    if (!x)
        return 1;
    read_values(x, NULL);
    read_values(x, NULL);
    recorder_chans_close(chans);
    return 0;
}

static int probe_mode(const char *file)
{
    recorder_chans_p chans = recorder_chans_open(file);
    unsigned channels = 0;
    size_t values = 0;
    if (chans) {
        for (recorder_chan_p chan = recorder_chan_find(chans, ".*", NULL);
             chan; chan = recorder_chan_find(chans, ".*", chan)) {
            recorder_data data[2 * 64];
            ringidx_t reader = 0;
            size_t got;
            channels++;
            (void)recorder_chan_type(chan);
            (void)recorder_chan_readable(chan, &reader);
            while ((got = recorder_chan_read(chan, data, 64, &reader)) != 0
                   && values < 100000)
                values += got;
        }
        recorder_chans_configure(chans, "values");
        recorder_chans_close(chans);
    }
    printf("%s channels %u values %zu\n", chans ? "opened" : "refused",
           channels, values);
    return 0;
}

static int replace_mode(const char *file)
{
    recorder_chans_p old = recorder_chans_open(file);
    if (!old)
        return 1;
    printf("valid before %d\n", recorder_chans_valid(old));
    recorder_chans_p chans = recorder_chans_new(file);
    printf("valid after %d\n", recorder_chans_valid(old));
    recorder_chans_close(old);
    recorder_chans_delete(chans);
    return 0;
}

static int export_mode(void)
{
    for (int i = 0; i < 23; i++)
        record(values, "x=%f y=%d", i * 1.5, i - 11);
    const char *file = recorder_export_file();
    recorder_chans_p chans = recorder_chans_open(file);
    if (!chans) {
        printf("cannot open %s\n", file);
        return 1;
    }
    printf("trace is the channel magic: %s\n",
           RECORDER_TRACE(values) == RECORDER_CHAN_MAGIC ? "yes" : "no");
    for (recorder_chan_p chan = recorder_chan_find(chans, ".*", NULL); chan;
         chan = recorder_chan_find(chans, ".*", chan)) {
        ringidx_t reader = 0;
        printf("%s '%s' %s size %zu\n", recorder_chan_name(chan),
               recorder_chan_description(chan),
               type_names[recorder_chan_type(chan)], recorder_chan_size(chan));
        read_values(chan, &reader);
    }
    recorder_chans_close(chans);
    return 0;
}

static int info_mode(void)
{
    recorder_activate(RECORDER_INFO(appended));     /* again: harmless */
    recorder_tweak_activate(RECORDER_INFO(seed_chans_tweak));
    RECORDER_INFO(appended)->trace = 0;
    for (recorder_info *info = recorder_list(); info; info = info->next)
        if (strcmp(info->name, "values") == 0
            || strcmp(info->name, "appended") == 0)
            printf("%s: %s (trace %ld)\n", info->name, info->description,
                   (long)info->trace);
    union { double d; uintptr_t u; } half = { 0.5 };
    ringidx_t first = recorder_append(RECORDER_INFO(appended), __func__,
                                      "seed_chans.c:23:" "four %d %s %f %c",
                                      (uintptr_t)-4, (uintptr_t)"args",
                                      half.u, 'z');
    ringidx_t second = recorder_append2(RECORDER_INFO(appended), __func__,
                                        "seed_chans.c:29:"
                                        "eight %d %d %d %d %d %d %d %d",
                                        1, 2, 3, 4, 5, 6, 7, 8);
    recorder_append3(RECORDER_INFO(appended), __func__,
                     "twelve %u %u %u %u %u %u %u %u %u %u %u %u",
                     1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31);
    recorder_append_fast(RECORDER_INFO(appended), __func__,
                         "seed_chans.c:31:" "fast %x", 0xabc, 0, 0, 0);
    recorder_append_fast2(RECORDER_INFO(appended), __func__,
                          "seed_chans.c:37:" "fast2 %*d|", 5, 42, 0, 0, 0, 0,
                          0, 0);
    recorder_append_fast3(RECORDER_INFO(appended), __func__,
                          "seed_chans.c:41:" "fast3 %s", (uintptr_t)"end",
                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    printf("indices %lu %lu\n", (unsigned long)first, (unsigned long)second);
    printf("tweak %ld\n", (long)RECORDER_TWEAK(seed_chans_tweak));
    fflush(stdout);
    return recorder_dump_for("appended") == 6 ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    const char *file = argc > 2 ? argv[2] : "";
    if (strcmp(mode, "write") == 0)
        return write_mode(file);
    if (strcmp(mode, "read") == 0)
        return read_mode(file);
    if (strcmp(mode, "shared") == 0)
        return shared_mode(file);
    if (strcmp(mode, "probe") == 0)
        return probe_mode(file);
    if (strcmp(mode, "replace") == 0)
        return replace_mode(file);
    if (strcmp(mode, "export") == 0)
        return export_mode();
    if (strcmp(mode, "info") == 0)
        return info_mode();
    fprintf(stderr, "usage: seed_chans write|read|shared|probe|replace FILE "
            "| export | info\n");
    return 2;
}
