/* short_job - a job that lives about a millisecond.
 *
 *   short_job RECORDS [INDEX]
 *
 * Makes RECORDS records into `job`, (INDEX, i), and exits at once: no
 * tracer can arm it after it starts.
 */
#include <recorder.h>
#include <stdlib.h>

RECORDER(job, 64, "A short job's records");

int main(int argc, char **argv)
{
    long records = argc > 1 ? atol(argv[1]) : 10;
    int index = argc > 2 ? atoi(argv[2]) : 0;
    for (long i = 0; i < records; i++)
        RECORD(job, "job %d record %ld", index, i);
    return 0;
}
