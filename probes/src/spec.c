/* spec.c - RECORDER_TRACES / recorder_trace_set: which topics record, print.
 *
 * A spec is items `[-|/]regex[=value]` separated by ':' or spaces. Every
 * item is also kept, in order, and replayed on topics and tweaks registered
 * later (a library loaded with dlopen), so the outcome does not depend on
 * when a topic came to exist.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>

struct spec_item {
    regex_t regex;
    int match_all;
    long long value;
    char *channels;             /* `topic=name1,name2`: names its arguments */
    int pattern;                /* not a plain name: may match many topics */
    unsigned matched;           /* topics and tweaks it ever changed */
    char *text;                 /* RECORDER_TRACES items: to report at exit */
    struct spec_item *next;
};

static struct spec_item *items, **items_tail = &items;
static int at_exit_registered;
static int list_at_exit;        /* `list` or `help` in RECORDER_TRACES */
static pthread_mutex_t items_lock = PTHREAD_MUTEX_INITIALIZER;

/* Held across fork (see core.c). */
void recorder_spec_fork_prepare(void)
{
    pthread_mutex_lock(&items_lock);
}

void recorder_spec_fork_release(void)
{
    pthread_mutex_unlock(&items_lock);
}

/* glibc's regcomp copies a bounded repetition's operand once per bound, so
 * nested bounds multiply: ((a{1,200}){1,200}){1,200} took 19 GB and more
 * than a minute. A pattern whose copies would exceed this is refused. */
#define NAME_REGEX_MAX_COST 8192
#define NAME_REGEX_MAX_DEPTH 32

/* Skips a bracket expression starting at `p` ('['); returns its end. */
static const char *skip_bracket(const char *p)
{
    p++;
    if (*p == '^')
        p++;
    if (*p == ']')
        p++;
    while (*p && *p != ']') {
        if (*p == '[' && (p[1] == ':' || p[1] == '=' || p[1] == '.')) {
            char kind = p[1];
            p += 2;
            while (*p && !(p[0] == kind && p[1] == ']'))
                p++;
            if (*p)
                p += 2;
            continue;
        }
        p++;
    }
    return *p ? p + 1 : p;
}

/* How many nodes glibc would build for `pattern`, roughly; stops counting
 * past the limit. */
static unsigned long long regex_cost(const char *p)
{
    unsigned long long level[NAME_REGEX_MAX_DEPTH + 1] = { 0 };
    unsigned long long atom = 0;        /* size of the last atom */
    unsigned depth = 0;
    while (*p) {
        if (level[depth] > NAME_REGEX_MAX_COST)
            return level[depth];
        if (*p == '(') {
            if (depth == NAME_REGEX_MAX_DEPTH)
                return NAME_REGEX_MAX_COST + 1;
            level[++depth] = 0;
            atom = 0;
            p++;
        } else if (*p == ')' && depth > 0) {
            atom = level[depth--] + 1;
            level[depth] += atom;
            p++;
        } else if (*p == '{') {
            char *end;
            unsigned long long low = strtoull(p + 1, &end, 10), high = low;
            if (*end == ',')
                high = end[1] == '}' ? low + 1 : strtoull(end + 1, &end, 10);
            while (*end && *end != '}')
                end++;
            p = *end ? end + 1 : end;
            if (high < low)
                high = low;
            if (high > NAME_REGEX_MAX_COST)
                return NAME_REGEX_MAX_COST + 1;
            level[depth] += atom * high;    /* atom already counted once */
            atom *= high + 1;
        } else {
            if (*p == '[')
                p = skip_bracket(p);
            else
                p += p[0] == '\\' && p[1] ? 2 : 1;
            atom = 1;
            level[depth]++;
        }
    }
    while (depth > 0) {
        level[depth - 1] += level[depth];
        depth--;
    }
    return level[0];
}

/* Compiles `pattern` to match whole names, case-insensitively. Not by
 * wrapping it in ^(...)$: `a)|(b` would then match any name starting
 * with a; recorder_name_matches checks the match spans the name. */
int recorder_compile_name_regex(regex_t *regex, const char *pattern)
{
    if (regex_cost(pattern) > NAME_REGEX_MAX_COST) {
        /* regerror on it must still work: compile something tiny. */
        regcomp(regex, "x", REG_EXTENDED);
        regfree(regex);
        return REG_ESIZE;
    }
    return regcomp(regex, pattern, REG_EXTENDED | REG_ICASE);
}

int recorder_name_matches(const regex_t *regex, const char *name)
{
    regmatch_t match;
    return regexec(regex, name, 1, &match, 0) == 0 && match.rm_so == 0
        && (size_t)match.rm_eo == strlen(name);
}

static int item_matches(const struct spec_item *item, const char *name)
{
    return item->match_all || recorder_name_matches(&item->regex, name);
}

/* Applies one item; returns how many topics and tweaks it changed. */
static unsigned apply_item(const struct spec_item *item,
                           struct recorder_topic *only_topic,
                           struct recorder_tweak *only_tweak)
{
    unsigned changed = 0;
    if (!only_tweak) {
        for (struct recorder_topic *topic = only_topic ? only_topic
                 : recorder_registry.topics;
             topic; topic = only_topic ? NULL : topic->next) {
            if (item_matches(item, topic->name)) {
                topic->trace = item->value;
                if (item->channels)
                    recorder_channels_name(topic, item->channels,
                                           item->pattern);
                changed++;
            }
        }
    }
    if (!only_topic) {
        for (struct recorder_tweak *tweak = only_tweak ? only_tweak
                 : recorder_registry.tweaks;
             tweak; tweak = only_tweak ? NULL : tweak->next) {
            /* `all` is about topics; a tweak is only set by its name. */
            if (!item->match_all && !item->channels
                && item_matches(item, tweak->name)) {
                tweak->value = item->value;
                changed++;
            }
        }
    }
    return changed;
}

void recorder_spec_apply_pending(struct recorder_topic *topic,
                                 struct recorder_tweak *tweak)
{
    pthread_mutex_lock(&items_lock);
    for (struct spec_item *item = items; item; item = item->next)
        item->matched += apply_item(item, topic, tweak);
    pthread_mutex_unlock(&items_lock);
}

static void list_topics(void);

/* Environment items are read before the program's topics exist (and a
 * library loaded later may still bring a match), so whether one matched
 * nothing, and which topics there are, is only known at exit. */
static void report_at_exit(void)
{
    if (list_at_exit)
        list_topics();
    pthread_mutex_lock(&items_lock);
    for (struct spec_item *item = items; item; item = item->next)
        if (item->text && !item->matched)
            recorder_error("recorder: RECORDER_TRACES/RECORDER_TWEAKS item "
                           "'%s' matched no topic or tweak", item->text);
    pthread_mutex_unlock(&items_lock);
}

static void list_topics(void)
{
    recorder_error("List of topics (trace value, size, description):");
    for (struct recorder_topic *topic = recorder_registry.topics; topic;
         topic = topic->next)
        recorder_error("  %-24s %4lld %6u  %s", topic->name,
                       (long long)topic->trace, topic->size,
                       topic->description);
    recorder_error("List of tweaks (value, description):");
    for (struct recorder_tweak *tweak = recorder_registry.tweaks; tweak;
         tweak = tweak->next)
        recorder_error("  %-24s %11lld  %s", tweak->name,
                       (long long)tweak->value, tweak->description);
}

/* Parses one item into `item`; reports and returns an error status. */
static int parse_item(char *text, struct spec_item *item)
{
    char *equal = strchr(text, '=');
    item->value = 1;
    if (*text == '-') {
        item->value = 0;
        text++;
    } else if (*text == '/') {
        item->value = -1;
        text++;
    }
    if (equal) {
        *equal = 0;
        char *end;
        errno = 0;
        item->value = strtoll(equal + 1, &end, 0);
        if ((errno || end == equal + 1 || *end)
            && recorder_channels_valid(equal + 1)) {
            item->value = 0;    /* record them, don't print */
            item->channels = strdup(equal + 1);
        } else if (errno || end == equal + 1 || *end) {
            recorder_error("recorder: invalid value '%s' for '%s' in trace "
                           "spec (expected an integer)", equal + 1, text);
            return RECORDER_TRACE_INVALID_VALUE;
        }
    }
    if (!*text) {
        recorder_error("recorder: empty name in trace spec item");
        return RECORDER_TRACE_INVALID_NAME;
    }
    item->match_all = strcmp(text, "all") == 0;
    item->pattern = item->match_all || text[strspn(text, "abcdefghijklmnopqrstuvwxyz"
                                      "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                      "0123456789_")] != 0;
    if (!item->match_all) {
        int status = recorder_compile_name_regex(&item->regex, text);
        if (status != 0) {
            char reason[128];
            regerror(status, &item->regex, reason, sizeof(reason));
            recorder_error("recorder: invalid topic pattern '%s' in trace "
                           "spec: %s", text, reason);
            return RECORDER_TRACE_INVALID_NAME;
        }
    }
    return RECORDER_TRACE_OK;
}

/* Applies a spec; `from_environment` defers `list` and the report of
 * items that match nothing to exit (see report_at_exit). Never calls
 * recorder_init: initialization itself applies RECORDER_TRACES. */
int recorder_spec_apply(const char *spec, int from_environment)
{
    char *copy = strdup(spec);
    if (!copy)
        return RECORDER_TRACE_INVALID_NAME;
    int status = RECORDER_TRACE_OK;
    char *cursor = copy;
    char *text;
    while ((text = strsep(&cursor, ": \t\n")) != NULL) {
        if (!*text)
            continue;
        if (strcmp(text, "help") == 0 || strcmp(text, "list") == 0) {
            if (from_environment)
                list_at_exit = 1;
            else
                list_topics();
            continue;
        }
        struct spec_item *item = calloc(1, sizeof(*item));
        if (!item)
            break;
        int item_status = parse_item(text, item);
        if (item_status != RECORDER_TRACE_OK) {
            status = item_status;
            free(item);
            continue;
        }
        if (from_environment)
            item->text = strdup(text);
        pthread_mutex_lock(&items_lock);
        unsigned changed = apply_item(item, NULL, NULL);
        item->matched = changed;
        *items_tail = item;
        items_tail = &item->next;
        pthread_mutex_unlock(&items_lock);
        /* `text` dies with `copy`: record only values, never its address. */
        RECORD(recorder_core, "Trace spec item set %lld on %u topics and "
               "tweaks", item->value, changed);
        /* Kept all the same: topics of libraries loaded later may match. */
        if (!changed && !from_environment)
            recorder_error("recorder: trace spec item '%s' matches no topic "
                           "or tweak (yet)", text);
    }
    free(copy);
    if (from_environment && !at_exit_registered) {
        at_exit_registered = 1;
        atexit(report_at_exit);
    }
    return status;
}

int recorder_trace_set(const char *spec)
{
    if (!spec)
        return RECORDER_TRACE_OK;
    recorder_init();
    return recorder_spec_apply(spec, 0);
}
