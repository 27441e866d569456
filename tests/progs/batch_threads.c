/* batch_threads - threads on every CPU record as fast as they can.
 *
 * Usage: batch_threads THREADS COUNT: prints "ready <pid>", waits for a
 * line, then THREADS threads (thread i pinned to CPU i % CPUs) each record
 * COUNT entries "thread %d record %ld" into topic `spin` (64 per CPU kept,
 * so a tracer that cannot keep up loses some: the count must still add
 * up), joins them, prints "done", and exits when stdin ends.
 */
#define _GNU_SOURCE
#include <recorder.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "pin.h"

RECORDER(spin, 64, "Records of threads racing on every CPU");

static long count;

static void *spin_thread(void *arg)
{
    int index = (int)(long)arg;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    pin_to_cpu((unsigned)(index % (cpus > 0 ? cpus : 1)));
    for (long i = 0; i < count; i++)
        RECORD(spin, "thread %d record %ld", index, i);
    return NULL;
}

int main(int argc, char **argv)
{
    char line[64];
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    count = argc > 2 ? strtol(argv[2], NULL, 0) : 23;
    if (threads < 1 || threads > 64)
        return 2;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 3;
    pthread_t ids[64];
    for (int i = 0; i < threads; i++)
        pthread_create(&ids[i], NULL, spin_thread, (void *)(long)i);
    for (int i = 0; i < threads; i++)
        pthread_join(ids[i], NULL);
    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin))
        ;
    return 0;
}
