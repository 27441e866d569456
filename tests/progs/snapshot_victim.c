/* snapshot_victim - a process that records, then dies by a signal.
 *
 *   snapshot_victim victim COUNT [handlers]
 *       prints "ready <pid>", waits for a line, records COUNT entries
 *       "victim %d" (i = 0..COUNT-1) into topic `victim`, prints
 *       "recorded", then reads one command: "segv" (a write through a bad
 *       pointer), "abort", "wait" (waits for a signal from outside), or
 *       "exit" (starts a thread that waits, then exits 3: the kernel ends
 *       that thread with a SIGKILL that is no death by a signal).
 *       With "handlers", the core's own dump handlers are installed first,
 *       so the fatal delivery is the second one (the core hands it back).
 *   snapshot_victim flood CPU
 *       records into topic `flood` on CPU until killed; prints "flooding".
 */
#define _GNU_SOURCE
#include <recorder.h>

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pin.h"

RECORDER(victim, 1024, "The victim's records before its death");
RECORDER(flood, 1024, "Records of the processes flooding the CPUs");

static volatile uintptr_t bad_address = 0x17;   /* hidden from the compiler */

static void *wait_forever(void *unused)
{
    (void)unused;
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv)
{
    char line[64];
    if (argc >= 3 && strcmp(argv[1], "flood") == 0) {
        pin_to_cpu((unsigned)atoi(argv[2]));
        printf("flooding\n");
        fflush(stdout);
        for (long i = 0;; i++)
            RECORD(flood, "flood %ld", i);
    }
    if (argc < 3 || strcmp(argv[1], "victim") != 0)
        return 2;
    int count = atoi(argv[2]);
    if (argc > 3 && strcmp(argv[3], "handlers") == 0)
        recorder_dump_on_common_signals(0, 0);
    pin_to_cpu(0);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 3;
    for (int i = 0; i < count; i++)
        RECORD(victim, "victim %d", i);
    printf("recorded\n");
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 3;
    if (strncmp(line, "segv", 4) == 0)
        *(volatile int *)bad_address = 23;
    else if (strncmp(line, "abort", 5) == 0)
        abort();
    else if (strncmp(line, "exit", 4) == 0) {
        pthread_t thread;
        pthread_create(&thread, NULL, wait_forever, NULL);
        usleep(10000);
        exit(3);
    }
    for (;;)
        pause();
}
