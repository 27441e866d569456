/* tracer_wait - fires known topics, says "ready", waits for stdin to close.
 *
 * Topics and probe sites, known to tests/test_notes.py:
 *   recorder:wait_loop   1 site, fired 23 times
 *   recorder:wait_edge   2 sites, fired once each
 * Exits with the status given as argv[1] (default 0) once stdin closes.
 */
#include <recorder.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

RECORDER(wait_loop, 32, "Records fired in a loop");
RECORDER(wait_edge, 8, "Records fired at start and end");

int main(int argc, char **argv)
{
    char buffer[64];
    RECORD(wait_edge, "start %s", argv[0]);
    for (int i = 0; i < 23; i++)
        RECORD(wait_loop, "i=%d", i);
    printf("ready\n");
    fflush(stdout);
    while (read(0, buffer, sizeof(buffer)) > 0)
        continue;
    RECORD(wait_edge, "end");
    return argc > 1 ? atoi(argv[1]) : 0;
}
