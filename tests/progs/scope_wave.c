/* scope_wave.c - a topic whose arguments `recorder scope` plots.
 *
 *   scope_wave COUNT
 *
 * Records `wave` "x=%d y=%.1f" with x = 0 .. COUNT-1 and y = 2x, one record
 * every millisecond, then x = 23, y = 46.5 every 10 ms until killed: the
 * last, min and max values a scope shows are known. Run it with
 * RECORDER_TRACES='wave=x_value,y_value' to name the two channels.
 * Prints "ready" once the first phase is recorded.
 */
#include <recorder.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

RECORDER(wave, 256, "Values for the scope");

static void pause_ms(long ms)
{
    struct timespec pause = { 0, ms * 1000000L };
    nanosleep(&pause, NULL);
}

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 23;
    for (int x = 0; x < count; x++) {
        RECORD(wave, "x=%d y=%.1f", x, 2.0 * x);
        pause_ms(1);
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        RECORD(wave, "x=%d y=%.1f", 23, 46.5);
        pause_ms(10);
    }
}
