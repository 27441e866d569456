/* workload_ticks - a traced process whose record counts a test controls.
 *
 * Prints "ready <pid>" and then, for every line read on stdin:
 *   "tick N" / "tock N" / "flood N": records N times into that topic;
 *   "exit" or end of input: exits 0; "exec PATH": runs PATH in its place.
 * After each command it prints "done" so the test knows the records exist.
 * tick carries (i, "tick-string", i * 0.5); tock carries (i); flood (i).
 */
#include <recorder.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

RECORDER(tick, 64, "Ticks with an integer, a string and a double");
RECORDER(tock, 64, "Tocks with one integer");
RECORDER(flood, 1024, "Many records, fast");

int main(void)
{
    char line[128];
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin)) {
        char command[32];
        long count = 0;
        if (sscanf(line, "%31s %ld", command, &count) < 1)
            continue;
        if (strcmp(command, "exit") == 0)
            break;
        for (long i = 0; i < count; i++) {
            if (strcmp(command, "tick") == 0)
                RECORD(tick, "tick %ld of %s half %.1f", i, "tick-string",
                       i * 0.5);
            else if (strcmp(command, "tock") == 0)
                RECORD(tock, "tock %ld", i);
            else if (strcmp(command, "flood") == 0)
                RECORD(flood, "flood %ld", i);
        }
        if (strcmp(command, "exec") == 0) {
            char path[256];
            if (sscanf(line, "exec %255s", path) == 1)
                execl(path, path, (char *)NULL);
            perror("exec");
            return 1;
        }
        printf("done\n");
        fflush(stdout);
    }
    return 0;
}
