/* batch_many_topics - more topics than one BPF discovery look covers.
 *
 *   batch_many_topics COUNT
 *
 * Registers 40 topics, many0 .. many39: more than BPF discovery looks at
 * in one harvest (16), and more than it arms in a process (32, batch.h):
 * a spec arming 30 of them sees every one armed; one arming all 40, the
 * cap said.
 * Reads the topics' names first (BPF cannot read a page the process never
 * touched), then sleeps 1 ms fifty times: each sleep a switch, a harvest,
 * so discovery gets its looks before anything is recorded. Then records
 * COUNT entries ("manyN J") in each topic, sleeping 1 ms after each
 * topic's (a harvest copies them before the exit, whose walk of every
 * shard of 30 topics would run out of steps), and exits.
 */
#include <recorder.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOPIC(n) RECORDER(many##n, 64, "One of many topics");
#define TEN(t) TOPIC(t##0) TOPIC(t##1) TOPIC(t##2) TOPIC(t##3) TOPIC(t##4) \
               TOPIC(t##5) TOPIC(t##6) TOPIC(t##7) TOPIC(t##8) TOPIC(t##9)
TOPIC(0) TOPIC(1) TOPIC(2) TOPIC(3) TOPIC(4)
TOPIC(5) TOPIC(6) TOPIC(7) TOPIC(8) TOPIC(9)
TEN(1) TEN(2) TEN(3)

#define TOUCH(n) touched += strlen(recorder_many##n##_topic.name);
#define TOUCH_TEN(t) TOUCH(t##0) TOUCH(t##1) TOUCH(t##2) TOUCH(t##3) TOUCH(t##4) \
                     TOUCH(t##5) TOUCH(t##6) TOUCH(t##7) TOUCH(t##8) TOUCH(t##9)
#define PUT(n)                                                          \
    for (int j = 0; j < count; j++)                                     \
        RECORD(many##n, "many" #n " %d", j);                            \
    usleep(1000);
#define PUT_TEN(t) PUT(t##0) PUT(t##1) PUT(t##2) PUT(t##3) PUT(t##4) \
                   PUT(t##5) PUT(t##6) PUT(t##7) PUT(t##8) PUT(t##9)

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 1;
    volatile size_t touched = 0;
    TOUCH(0) TOUCH(1) TOUCH(2) TOUCH(3) TOUCH(4) TOUCH(5) TOUCH(6) TOUCH(7)
    TOUCH(8) TOUCH(9) TOUCH_TEN(1) TOUCH_TEN(2) TOUCH_TEN(3)
    for (int i = 0; i < 50; i++)
        usleep(1000);
    PUT(0) PUT(1) PUT(2) PUT(3) PUT(4) PUT(5) PUT(6) PUT(7) PUT(8) PUT(9)
    PUT_TEN(1) PUT_TEN(2) PUT_TEN(3)
    return 0;
}
