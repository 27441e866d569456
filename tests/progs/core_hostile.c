/* core_hostile.c - what a traced program's own formats can do to its dump.
 *
 *   core_hostile crash     records entries with huge widths and precisions,
 *                          then faults; malloc is interposed and refuses to
 *                          run once the fault is near (a signal handler
 *                          that mallocs deadlocks when the fault interrupted
 *                          malloc): it prints "malloc in handler" and exits
 *                          97 instead of dying by SIGSEGV
 */
#define _GNU_SOURCE
#include <recorder.h>

#include <stddef.h>
#include <string.h>
#include <unistd.h>

RECORDER(wide, 16, "Conversions a hostile format could make huge");

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static volatile int faulting;

static void refuse(void)
{
    static const char text[] = "malloc in handler\n";
    write(2, text, sizeof(text) - 1);
    _exit(97);
}

void *malloc(size_t size)
{
    if (faulting)
        refuse();
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size)
{
    if (faulting)
        refuse();
    return __libc_calloc(count, size);
}

void *realloc(void *memory, size_t size)
{
    if (faulting)
        refuse();
    return __libc_realloc(memory, size);
}

void free(void *memory)
{
    __libc_free(memory);
}

static volatile unsigned long bad_address = 0x17;

int main(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "crash") != 0)
        return 2;
    recorder_dump_on_common_signals(0, 0);
    RECORD(wide, "precision [%.15000f]", 1.5);
    RECORD(wide, "width [%2147483647d]", 7);
    RECORD(wide, "width [%1000000000d]", 8);
    RECORD(wide, "star [%*d]", 2000000000, 9);
    RECORD(wide, "star precision [%.*f]", 100000, 2.5);
    RECORD(wide, "huge [%.400f]", 1e308);
    faulting = 1;
    *(volatile int *)bad_address = 23;
    return 0;
}
