#include <recorder.h>
#include <stdio.h>
RECORDER(smoke, 8, "Smoke test topic");
RECORDER(other, 4, "Another topic");
int main(void)
{
    for (int i = 0; i < 10; i++)
        RECORD(smoke, "i=%d half=%.1f name=%s ptr=%p", i, i / 2.0, "hello", (void *)&i);
    RECORD(other, "no args");
    RECORD_FAST(other, "fast %u", 42u);
    RECORD(other, "twelve %d %d %d %d %d %d %d %d %d %d %d %d", 1,2,3,4,5,6,7,8,9,10,11,12);
    recorder_dump();
    return 0;
}
