"""A multiprocessing pool of 3 workers, started with fork, maps 30 items;
each worker records the items it handles into `pool_item`.

    python py_pool.py GO_FILE

Prints "ready PID" once its recorder core is loaded, starts the pool when
GO_FILE exists, and prints "done" with the workers' pids at the end.
"""

import multiprocessing
import os
import sys
import time

import recorder


def handle(item: int) -> int:
    recorder.record("pool_item", "item %d in %d", item, os.getpid())
    return os.getpid()


if __name__ == "__main__":
    print("ready", os.getpid(), flush=True)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    pool = multiprocessing.get_context("fork").Pool(3)
    workers = set(pool.map(handle, range(30), chunksize=1))
    pool.close()
    pool.join()
    print("done", " ".join(map(str, sorted(workers))), flush=True)
