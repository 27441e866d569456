/* core_chain - a program's own SIGSEGV handler still sees the real fault.
 *
 * Installs an SA_SIGINFO handler, then the recorder's crash dump on top,
 * records 23 entries and writes to address 0x17. The recorder dumps and
 * hands the fault back: the program's handler prints the si_code and
 * si_addr it received and exits 42.
 */
#include <recorder.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

RECORDER(chain, 32, "Records before the fault");

static void own_handler(int signal_number, siginfo_t *info, void *context)
{
    (void)context;
    char line[96];
    int length = snprintf(line, sizeof(line), "own handler: signal %d code %d "
                          "address %p\n", signal_number, info->si_code,
                          info->si_addr);
    if (write(1, line, (size_t)length) < 0)
        _exit(1);
    _exit(42);
}

int main(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = own_handler;
    action.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &action, NULL);
    recorder_dump_on_common_signals(0, 0);
    for (int i = 0; i < 23; i++)
        RECORD(chain, "before the fault %d", i);
    volatile int *volatile nowhere = (volatile int *)0x17;
    *nowhere = 1;
    return 0;
}
