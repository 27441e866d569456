/* core_format.c - how a dump formats arguments.
 *
 *   core_format     records one entry per case into `fmt` (pinned to one
 *                   CPU, so the dump keeps their order), prints on stdout
 *                   the address of a string that was unmapped after being
 *                   recorded, then dumps `fmt`
 */
#define _GNU_SOURCE
#include <recorder.h>
#include "pin.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

RECORDER(fmt, 64, "Formatting cases");

int main(void)
{
    if (pin_to_cpu(0) != 0)
        return 2;

    char long_text[301];
    memset(long_text, 'x', 300);
    long_text[300] = 0;
    const char *host = "example.org";
    char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return 2;
    strcpy(page, "gone soon");

    RECORD(fmt, "no arguments");
    RECORD(fmt, "int %d", 23);
    RECORD(fmt, "negative %d %ld %lld %hd %hhd", -23, -23L,
           -9007199254740993LL, (short)-2, (signed char)-3);
    RECORD(fmt, "unsigned %u %x %#o %lu", -1, 255u, 8u, 18446744073709551615ul);
    RECORD(fmt, "double %f %.3e %g %5.1f%%", 3.5, -0.00123, 1e100, 99.94);
    RECORD(fmt, "float %f", 1.25f);
    RECORD(fmt, "int as double %.1f, double as int %d", 7, 2.9);
    RECORD(fmt, "twelve %d %d %d %d %d %d %d %d %d %d %d %d",
           1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12);
    RECORD(fmt, "mixed %s=%d %.2f %p %c", host, 42, 0.5, (void *)0x1234, 'A');
    RECORD(fmt, "pointers %p %p", (void *)0xdeadbeef, (void *)0);
    RECORD(fmt, "string [%s] [%.3s] [%8s] [%-8s]", host, host, "ab", "ab");
    RECORD(fmt, "null string %s", (const char *)0);
    RECORD(fmt, "long %s", long_text);
    RECORD(fmt, "dangling %s", (const char *)page);
    RECORD(fmt, "star [%*d] [%-*d] [%.*f]", 6, 23, 4, 5, 2, 3.14159);
    RECORD(fmt, "missing %d %d", 1);
    RECORD(fmt, "hex %#lx %08X", 0xabcdefUL, 0xBEEFu);
    /* A conversion too long to rebuild shows as written; its '*' and its
     * own argument are still consumed. */
    RECORD(fmt, "overlong [%--------------------------------"
           "--------------------------------*d] next %d", 5, 7, 23);

    munmap(page, 4096);
    printf("dangling %p\n", (void *)page);
    fflush(stdout);
    recorder_dump_for("fmt");
    return 0;
}
