/* core_fork.c - fork while other threads use the core, and fork with a
 * RECORDER_SHARE directory too full for the child's copy of the rings.
 *
 *   core_fork race FORKS   a thread creates run-time topics (and registers
 *                          a C topic, and dumps) in a loop while the main
 *                          thread forks FORKS children; each child, under
 *                          alarm(5), creates a topic, records into it,
 *                          dumps it and sets a trace spec, and exits 0 if
 *                          that all worked. Prints "forks N ok M hung H";
 *                          exits 0 when every child did.
 *   core_fork share        records once into `big` pinned to CPU 0, once
 *                          pinned to CPU 1, prints "recorded PID", then
 *                          waits for a line on stdin before forking. The
 *                          child, pinned to CPU 1, records 500 times and
 *                          exits 0 if its CPU 1 shard holds the parent's
 *                          record then its own (head 501). The parent
 *                          prints "child PID status STATUS".
 *
 * `big` keeps 1024 records: each shard is about 148 KiB of the file.
 */
#define _GNU_SOURCE
#include <recorder.h>
#include "pin.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

RECORDER(steady, 8, "A C topic the busy thread registers again and again");
RECORDER(big, 1024, "Shards large enough to fill a small file system");

#define MAX_FORKS 1000

static atomic_int stop;

static void *busy(void *unused)
{
    (void)unused;
    char name[32];
    for (unsigned i = 0; !atomic_load(&stop); i++) {
        snprintf(name, sizeof(name), "busy%u", i % 256);
        recorder_topic_create(name, 4, "Made by the busy thread");
        recorder_topic_register(&recorder_steady_topic);
        if (i % 64 == 0)
            recorder_dump_for("busy0");     /* never records: no output */
    }
    return NULL;
}

/* What a child does first: every call below takes one of the core's
 * locks (creating a topic takes them all). */
static int child_work(void)
{
    alarm(5);
    struct recorder_topic *topic = recorder_topic_create(
        "child", 8, "Made by each forked child");
    if (!topic)
        return 1;
    __u64 args[1] = { (__u64)getpid() };
    recorder_record_dynamic(topic, "core_fork.c:child", "child pid %d", 1,
                            RECORDER_ARG_INT, args);
    if (recorder_dump_for("child") != 1)
        return 2;
    if (recorder_trace_set("child=0") != RECORDER_TRACE_OK)
        return 3;
    return 0;
}

static int race(int forks)
{
    static pid_t children[MAX_FORKS];
    if (forks < 1 || forks > MAX_FORKS)
        return 2;
    pthread_t thread;
    if (pthread_create(&thread, NULL, busy, NULL) != 0)
        return 2;
    usleep(10000);
    for (int i = 0; i < forks; i++) {
        pid_t child = fork();
        if (child == 0)
            exit(child_work());
        children[i] = child;
        usleep(2000);
    }
    int ok = 0, hung = 0;
    for (int i = 0; i < forks; i++) {
        int status;
        if (children[i] < 0 || waitpid(children[i], &status, 0) < 0)
            continue;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            ok++;
        else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
            hung++;
    }
    atomic_store(&stop, 1);
    pthread_join(thread, NULL);
    printf("forks %d ok %d hung %d\n", forks, ok, hung);
    return ok == forks ? 0 : 1;
}

static int share(void)
{
    if (pin_to_cpu(0) != 0)
        return 2;
    RECORD(big, "parent on CPU %d", 0);
    if (pin_to_cpu(1) != 0)
        return 2;
    RECORD(big, "parent on CPU %d", 1);
    printf("recorded %d\n", (int)getpid());
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof(line), stdin))
        return 2;
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < 500; i++)
            RECORD(big, "child %d", 1000 + i);
        const struct recorder_shard *shard = recorder_big_topic.shards[1];
        int kept = shard && shard->head == 501
            && shard->entries[0].sequence == 1
            && shard->entries[0].args[0] == 1
            && shard->entries[500].args[0] == 1499;
        exit(kept ? 0 : 1);
    }
    int status = -1;
    if (child < 0 || waitpid(child, &status, 0) < 0)
        return 2;
    printf("child %d status %d\n", (int)child, status);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "race") == 0)
        return race(atoi(argv[2]));
    if (argc == 2 && strcmp(argv[1], "share") == 0)
        return share();
    return 2;
}
