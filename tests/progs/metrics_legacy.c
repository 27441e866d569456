/* metrics_legacy - a probe of the earlier contract: one argument, the entry.
 *
 * Links the core (so the tracer sees a recorder process) and fires its own
 * `recorder:legacy` SDT probe 23 times with only the entry's address, as
 * cores built before the register copies did. Its other registers hold
 * whatever the compiler left there: the tracer must count these records
 * and aggregate no value from them. Prints "ready PID", waits for a line,
 * fires, prints "done", waits for "exit" or the end of input.
 */
#include <recorder.h>
#include <stdio.h>
#include <string.h>
#include <sys/sdt.h>
#include <unistd.h>

RECORDER(present, 8, "A topic of the current contract, never recorded");

int main(void)
{
    struct recorder_record entry;
    char line[64];
    memset(&entry, 0, sizeof(entry));
    entry.nargs = 1;
    entry.args[0] = 5;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin) && strncmp(line, "exit", 4) != 0) {
        for (int i = 0; i < 23; i++)
            STAP_PROBE1(recorder, legacy, &entry);
        printf("done\n");
        fflush(stdout);
    }
    if (0)
        RECORD(present, "never");
    return 0;
}
