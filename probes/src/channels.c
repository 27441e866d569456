/* channels.c - RECORDER_TRACES="topic=name1,name2": a topic's arguments
 * named as channels (the seed's value export), for `recorder scope`.
 *
 * A naming is published on the registry's `channels` list (registry.h,
 * probes/PROBES.md), which readers walk without locks like the topics: a
 * node is complete before the release store that links it. Nodes are never
 * freed; a topic named again gets a newer node that readers find first.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <ctype.h>
#include <string.h>

#define MAX_CHANNELS RECORDER_MAX_ARGS

static pthread_mutex_t channels_lock = PTHREAD_MUTEX_INITIALIZER;

/* Names like C identifiers (dots allowed), separated by commas, at most
 * one per argument a record can carry. */
int recorder_channels_valid(const char *names)
{
    unsigned count = 0;
    const char *p = names;
    for (;;) {
        if (!isalpha((unsigned char)*p) && *p != '_')
            return 0;
        while (isalnum((unsigned char)*p) || *p == '_' || *p == '.')
            p++;
        if (++count > MAX_CHANNELS)
            return 0;
        if (*p == 0)
            return 1;
        if (*p++ != ',')
            return 0;
    }
}

void recorder_channels_name(struct recorder_topic *topic, const char *names,
                            int pattern)
{
    recorder_export_channels(topic, names, pattern);
    struct recorder_channels *node = calloc(1, sizeof(*node));
    if (!node)
        return;
    node->topic_id = topic->id;
    node->count = 1;
    for (const char *p = names; *p; p++)
        node->count += *p == ',';
    node->names.text = names;       /* the spec item's copy, kept forever */
    pthread_mutex_lock(&channels_lock);
    node->next = recorder_registry.channels;
    atomic_store_explicit(
        (_Atomic(struct recorder_channels *) *)&recorder_registry.channels,
        node, memory_order_release);
    pthread_mutex_unlock(&channels_lock);
    RECORD(recorder_core, "Topic %s exports %u channels",
           topic->name, node->count);
}
