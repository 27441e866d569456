/* chans_export.c - RECORDER_TRACES="topic=name1,name2" as the seed exports
 * it: each named argument of the topic's records also goes, with the
 * record's timestamp, into a channel of recorder_export_file() (made at the
 * first such item), which the seed's recorder_scope and any program using
 * recorder_chans_open read. A topic that only exports gets the trace value
 * RECORDER_CHAN_MAGIC: its records take the traced path (recorder_trace_
 * entry) to reach the channels, and print nothing.
 *
 * A thread of the owner polls the file's mailbox every 100 ms and applies
 * what recorder_chans_configure left there with recorder_trace_set, as the
 * seed's does.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

RECORDER_TWEAK_DEFINE(recorder_export_size, RECORDER_EXPORT_SIZE,
                      "Values each exported channel keeps");

struct export {
    const struct recorder_topic *topic;
    unsigned count;
    recorder_chan_p channels[RECORDER_MAX_ARGS];
    _Atomic unsigned char typed[RECORDER_MAX_ARGS];    /* type learned */
    struct export *next;
};

static pthread_mutex_t export_lock = PTHREAD_MUTEX_INITIALIZER;
static recorder_chans_p export_file;
static struct export *exports;          /* newest first, never freed */
static __u64 commands_seen;

const char *recorder_export_file(void)
{
    static char path[4096];
    const char *directory = secure_getenv("RECORDER_SHARE");
    if (!directory || !*directory)
        return "/tmp/recorder_share";
    snprintf(path, sizeof(path), "%s/recorder_chans", directory);
    return path;
}

static void *apply_commands(void *unused)
{
    char command[1024];
    struct timespec pause = { 0, 100 * 1000 * 1000 };
    for (;;) {
        if (recorder_chans_command(export_file, &commands_seen, command,
                                   sizeof(command))) {
            RECORD(recorder_core, "Channels command %+s", command);
            recorder_trace_set(command);
        }
        nanosleep(&pause, NULL);
    }
    return unused;
}

static int open_export_file(void)
{
    if (export_file)
        return 1;
    export_file = recorder_chans_new(recorder_export_file());
    if (!export_file) {
        recorder_error("recorder: cannot create the channels file %s",
                       recorder_export_file());
        return 0;
    }
    pthread_t thread;
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    pthread_create(&thread, &attributes, apply_commands, NULL);
    pthread_attr_destroy(&attributes);
    return 1;
}

void recorder_export_channels(struct recorder_topic *topic, const char *names,
                              int pattern)
{
    struct export *export = calloc(1, sizeof(*export));
    if (!export)
        return;
    pthread_mutex_lock(&export_lock);
    if (!open_export_file()) {
        pthread_mutex_unlock(&export_lock);
        free(export);
        return;
    }
    export->topic = topic;
    __s64 size = RECORDER_TWEAK(recorder_export_size);
    const char *name = names;
    while (*name && export->count < RECORDER_MAX_ARGS) {
        size_t length = strcspn(name, ",");
        char full[512];
        snprintf(full, sizeof(full), "%s%s%.*s", pattern ? topic->name : "",
                 pattern ? "/" : "", (int)length, name);
        recorder_data zero = { 0 };
        export->channels[export->count++] = recorder_chan_new(
            export_file, RECORDER_NONE, size > 0 ? (size_t)size : 1, full,
            topic->description, "", zero, zero);
        name += length + (name[length] == ',');
    }
    export->next = exports;
    __atomic_store_n(&exports, export, __ATOMIC_RELEASE);
    if (topic->trace == 0)
        topic->trace = RECORDER_CHAN_MAGIC;
    pthread_mutex_unlock(&export_lock);
}

/* The seed's type of a channel from the format's conversion letter. */
static recorder_type type_of(char letter)
{
    if (letter && strchr("fFgGeEaA", letter))
        return RECORDER_REAL;
    if (letter && strchr("dDib", letter))
        return RECORDER_SIGNED;
    if (letter && strchr("cCsSoOuUxXp", letter))
        return RECORDER_UNSIGNED;
    return RECORDER_INVALID;
}

int recorder_export_entry(const struct recorder_topic *topic,
                          const struct recorder_record *entry)
{
    struct export *export = __atomic_load_n(&exports, __ATOMIC_ACQUIRE);
    while (export && export->topic != topic)
        export = export->next;
    if (!export)
        return 0;
    char format[256];
    int format_read = -1;
    for (unsigned i = 0; i < export->count; i++) {
        recorder_chan_p channel = export->channels[i];
        if (!channel)
            continue;
        if (!atomic_exchange(&export->typed[i], 1)) {
            if (format_read < 0)
                format_read = recorder_read_string(entry->format, format,
                                                   sizeof(format)) >= 0;
            recorder_chan_set_type(channel, format_read
                ? type_of(recorder_conversion_letter(format, i))
                : RECORDER_INVALID);
        }
        recorder_data item[2] = {
            { .unsigned_value = entry->timestamp },
            { .unsigned_value = i < entry->nargs ? entry->args[i] : 0 },
        };
        recorder_chan_write(channel, item, 1);
    }
    return 1;
}
