/* pin.h - the test programs' one way to stay on a CPU.
 *
 * Records land in the shard of the CPU that writes them: a test that
 * expects exact counts in one ring pins the writer first.
 */
#ifndef TESTS_PIN_H
#define TESTS_PIN_H

#include <sched.h>

/* Runs the calling thread on `cpu` only; 0 on success, -1 on failure. */
static inline int pin_to_cpu(unsigned cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}

#endif
