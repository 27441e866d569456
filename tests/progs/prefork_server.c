/* prefork_server - a server that forks its workers without exec.
 *
 *   prefork_server WORKERS RECORDS INTERVAL_US
 *
 * Prints "ready <pid>", then sleeps until a line arrives on stdin: the
 * tracer starts meanwhile. Then it forks WORKERS workers (fork only, as
 * preforking servers do); worker w makes RECORDS records into `work`,
 * (w, i), INTERVAL_US apart, and exits. The parent prints "worker <pid>"
 * for each, waits for them all and prints "done" with their exit codes'
 * sum.
 */
#include <recorder.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

RECORDER(work, 4096, "What a forked worker does");

static void pause_us(long us)
{
    struct timespec delay = { us / 1000000, (us % 1000000) * 1000 };
    if (us > 0)
        nanosleep(&delay, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: prefork_server WORKERS RECORDS INTERVAL_US\n");
        return 2;
    }
    int workers = atoi(argv[1]);
    long records = atol(argv[2]);
    long interval = atol(argv[3]);
    char line[64];
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    for (int w = 0; w < workers; w++) {
        pid_t pid = fork();
        if (pid < 0)
            return 1;
        if (pid == 0) {
            for (long i = 0; i < records; i++) {
                RECORD(work, "worker %d record %ld", w, i);
                pause_us(interval);
            }
            _exit(0);
        }
        printf("worker %d\n", (int)pid);
        fflush(stdout);
    }
    int failed = 0, status = 0;
    while (wait(&status) > 0)
        failed += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    printf("done %d\n", failed);
    fflush(stdout);
    return failed != 0;
}
