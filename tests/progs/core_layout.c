/* core_layout.c - the compiler's view of the probe contract's structs.
 *
 * Prints "struct field offset size" (size "-" for a flexible array) for
 * every field that probes/PROBES.md documents, so tests/test_contract.py
 * checks the document against what the compiler lays out, not only against
 * a second reading of the headers.
 */
#include <recorder.h>
#include <recorder/share.h>

#include <stddef.h>
#include <stdio.h>

#define FIELD(type, field)                                                  \
    printf("%s %s %zu %zu\n", #type, #field, offsetof(struct type, field),  \
           sizeof(((struct type *)0)->field))
/* A flexible array member: its size is the capacity's business. */
#define FLEXIBLE(type, field)                                               \
    printf("%s %s %zu -\n", #type, #field, offsetof(struct type, field))
#define SIZE(type) printf("%s sizeof %zu\n", #type, sizeof(struct type))

int main(void)
{
    FIELD(recorder_record, timestamp);
    FIELD(recorder_record, sequence);
    FIELD(recorder_record, tid);
    FIELD(recorder_record, topic_id);
    FIELD(recorder_record, arg_types);
    FIELD(recorder_record, cpu);
    FIELD(recorder_record, nargs);
    FIELD(recorder_record, flags);
    FIELD(recorder_record, format);
    FIELD(recorder_record, where);
    FIELD(recorder_record, args);
    SIZE(recorder_record);

    FIELD(recorder_registry, magic);
    FIELD(recorder_registry, version);
    FIELD(recorder_registry, entry_size);
    FIELD(recorder_registry, topics);
    FIELD(recorder_registry, topic_count);
    FIELD(recorder_registry, shard_count);
    FIELD(recorder_registry, tweaks);
    FIELD(recorder_registry, channels);
    SIZE(recorder_registry);

    FIELD(recorder_channels, topic_id);
    FIELD(recorder_channels, count);
    FIELD(recorder_channels, names);
    FIELD(recorder_channels, next);
    SIZE(recorder_channels);

    FIELD(recorder_topic, trace);
    FIELD(recorder_topic, id);
    FIELD(recorder_topic, size);
    FIELD(recorder_topic, name);
    FIELD(recorder_topic, description);
    FIELD(recorder_topic, armed);
    FIELD(recorder_topic, next);
    FIELD(recorder_topic, shards);
    SIZE(recorder_topic);

    FIELD(recorder_shard, head);
    FIELD(recorder_shard, mask);
    FIELD(recorder_shard, keep);
    FIELD(recorder_shard, topic_id);
    FIELD(recorder_shard, cpu);
    FIELD(recorder_shard, reserved);
    FLEXIBLE(recorder_shard, entries);
    SIZE(recorder_shard);

    FIELD(recorder_share_block, magic);
    FIELD(recorder_share_block, kind);
    FIELD(recorder_share_block, bytes);
    FIELD(recorder_share_block, payload_bytes);
    FIELD(recorder_share_block, reserved);
    SIZE(recorder_share_block);

    FIELD(recorder_share_file, magic);
    FIELD(recorder_share_file, version);
    FIELD(recorder_share_file, entry_size);
    FIELD(recorder_share_file, pid);
    FIELD(recorder_share_file, page_size);
    FIELD(recorder_share_file, created_ns);
    FIELD(recorder_share_file, registry_address);
    FIELD(recorder_share_file, command);
    FIELD(recorder_share_file, executable);
    SIZE(recorder_share_file);

    FIELD(recorder_share_topic, id);
    FIELD(recorder_share_topic, size);
    FIELD(recorder_share_topic, topic_address);
    FIELD(recorder_share_topic, name);
    FIELD(recorder_share_topic, description);
    SIZE(recorder_share_topic);
    return 0;
}
