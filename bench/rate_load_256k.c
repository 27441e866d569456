/* rate_load_256k.c - bench/rate_load.c with a 262,144-entry ring for
 * `load`, and the most it fell behind its schedule printed at the end.
 *
 * Paced by the wall clock, rate_load owes the records of any time it was
 * kept off its CPU and writes them at once when it runs again: a burst
 * faster than any harvest, which its ring must hold. At 500 k records/s a
 * 1,024-entry ring holds 2 ms of them, 65,536 entries 131 ms, 262,144
 * entries 524 ms: on a machine shared with a VM run the program was kept
 * off its CPU for more than 131 ms (bench/README.md), so the benchmark's
 * program sizes its ring as a program recording this fast and meaning to
 * keep every record would (RECORDER(name, entries, ...)): 36 MiB a shard.
 * Its shards are made before it says "ready": populating one took up to
 * ~0.5 s on this VM (memory fresh to the guest), untraced too, and the
 * first RECORD on each CPU paid it, then wrote a burst of what it owed.
 * Used by trace_rate_bench.py.
 */
#define LOAD_ENTRIES 262144
#define LOAD_REPORT_BEHIND 1
#define LOAD_SHARDS_FIRST 1     /* populated before its first record */
#include "rate_load.c"
