/* fork_late_topic - a forked child registers a topic whose name it never read.
 *
 *   fork_late_topic [touch]
 *
 * Prints "ready <pid>" and waits for a line on stdin: the tracer starts
 * meanwhile. Then it forks one child (no exec) and prints "child <pid>".
 * The child waits for a line (the tracer has armed it meanwhile), then
 * registers a second topic named `late` whose name sits alone in a 64 KiB
 * aligned read-only page that neither process ever reads: fork copies no
 * page table of a file mapping, so that page is not mapped in the child
 * and BPF cannot read the name there. The child records (i) into it every
 * 2 ms until a line arrives, prints "recorded N" and exits; the parent
 * waits for it and prints "done <status>". With `touch`, the child reads
 * the name first (mapping its page): the control case.
 */
#include <recorder.h>
#include <poll.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

/* The parent's topic of that name: the tracer arms names it finds. */
RECORDER(late, 64, "The first topic named late");

/* Alone in its fault-around window: touching other read-only data maps
 * its neighbours, never this page. Nothing reads it. */
__attribute__((aligned(65536)))
static const char late_name[65536] = "late";

static struct recorder_topic late_topic = {
    .trace = 0,
    .size = 4096,
    .name = late_name,
    .description = "A second topic named late, registered in the child",
};

static int line_waiting(int timeout_ms)
{
    struct pollfd in = { .fd = 0, .events = POLLIN };
    return poll(&in, 1, timeout_ms) > 0;
}

int main(int argc, char **argv)
{
    int touch = argc > 1 && argv[1][0] == 't';
    char line[64];
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        if (read(0, line, 1) != 1)      /* armed by now */
            _exit(1);
        if (touch && *(volatile const char *)late_name != 'l')
            _exit(1);
        recorder_topic_register(&late_topic);
        long i = 0;
        do
            recorder_append(&late_topic, "fork_late_topic.c", "late record %d",
                            (uintptr_t)i++, 0, 0, 0);
        while (!line_waiting(2));
        printf("recorded %ld\n", i);
        fflush(stdout);
        _exit(0);
    }
    printf("child %d\n", (int)pid);
    fflush(stdout);
    int status = 0;
    waitpid(pid, &status, 0);
    printf("done %d\n", status);
    fflush(stdout);
    return status != 0;
}
