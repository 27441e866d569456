/* core_share.c - RECORDER_SHARE=DIR: rings kept in a file.
 *
 *   core_share COUNT          pinned to CPU 0, records COUNT times into
 *                             `shared` (keeps 23), prints "ready PID" and
 *                             waits for stdin to close, then exits normally
 *   core_share fork COUNT M   records COUNT times, forks; the child records
 *                             M times into `shared` and exits; the parent
 *                             waits for it, prints "parent PID child PID",
 *                             then waits for stdin to close
 *
 * Entry arguments: (i, i * i, -i) for the parent, (1000 + i, pid, 0) for
 * the child.
 */
#define _GNU_SOURCE
#include <recorder.h>
#include "pin.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

RECORDER(shared, 23, "Records kept in the shared file");
RECORDER(unused, 8, "A topic that never records");

static void wait_for_stdin_to_close(void)
{
    char buffer[64];
    while (read(0, buffer, sizeof(buffer)) > 0)
        ;
}

int main(int argc, char **argv)
{
    if (pin_to_cpu(0) != 0)
        return 2;
    int forking = argc == 4 && strcmp(argv[1], "fork") == 0;
    if (argc != 2 && !forking)
        return 2;
    int count = atoi(argv[forking ? 2 : 1]);
    for (int i = 0; i < count; i++)
        RECORD(shared, "shared %d square %d negative %d", i, i * i, -i);
    if (forking) {
        pid_t child = fork();
        if (child == 0) {
            int in_child = atoi(argv[3]);
            for (int i = 0; i < in_child; i++)
                RECORD(shared, "child %d pid %d zero %d", 1000 + i,
                       (int)getpid(), 0);
            exit(0);
        }
        waitpid(child, NULL, 0);
        printf("parent %d child %d\n", (int)getpid(), (int)child);
    } else {
        printf("ready %d\n", (int)getpid());
    }
    fflush(stdout);
    wait_for_stdin_to_close();
    return 0;
}
