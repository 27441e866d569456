/* recorder_demo - a small "server" that records what it does, then crashes.
 *
 * Usage: recorder_demo [SECONDS]. Handles fake requests for SECONDS (default
 * 4), recording into three topics, then dereferences NULL: the crash dump
 * shows its last records and the process still dies by SIGSEGV.
 */
#include <recorder.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

RECORDER(demo_request, 64, "Requests received");
RECORDER(demo_reply, 64, "Replies sent, with their latency");
RECORDER(demo_debug, 32, "Chatty internals (not traced by default)");

static const char *paths[] = { "/index.html", "/api/items", "/favicon.ico" };

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 4.0;
    recorder_dump_on_common_signals(0, 0);
    struct timespec start, now, pause = { 0, 2000000 };
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (unsigned id = 0;; id++) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        double elapsed = (double)(now.tv_sec - start.tv_sec)
                       + (double)(now.tv_nsec - start.tv_nsec) / 1e9;
        if (elapsed >= seconds)
            break;
        const char *path = paths[id % 3];
        RECORD(demo_request, "request %u for %s", id, path);
        RECORD(demo_debug, "looking up %s in cache slot %u", path, id % 7);
        nanosleep(&pause, NULL);
        RECORD(demo_reply, "reply %u: %d bytes in %.3f ms", id,
               200 + (int)(id % 5) * 100, 2.0 + (id % 3) * 0.25);
    }
    RECORD(demo_request, "about to crash on purpose");
    volatile int *nowhere = NULL;
    return *nowhere;
}
