/* workload_burst - records as soon as it starts, then exits.
 *
 * Usage: workload_burst [COUNT [EXIT_CODE]]: records COUNT (default 23)
 * records into topic `burst` from main's first line, then exits EXIT_CODE.
 * A tracer that sees all COUNT traced the process from its first record.
 */
#include <recorder.h>
#include <stdlib.h>

RECORDER(burst, 128, "Records made right at start");

int main(int argc, char **argv)
{
    long count = argc > 1 ? strtol(argv[1], NULL, 0) : 23;
    int code = argc > 2 ? atoi(argv[2]) : 0;
    for (long i = 0; i < count; i++)
        RECORD(burst, "burst %ld of %ld", i, count);
    return code;
}
