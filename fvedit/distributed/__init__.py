"""Scale-out on Ray: the device stages of many batches (and videos) on several workers.

    pool.py    Ray start/join, the worker actors that hold the model once, ordered results
    ray_run.py the `edit`/`encode` jobs over a pool: analysis here, inversion and decoding on the
               workers, paste and write here, one video after another with the same pool

Nothing in this package is imported by the single-process path, and Ray itself is imported only
when a pool starts (`fvedit[ray]` is an optional extra). A batch is the same `FrameBatch` the
in-process scheduler plans, and a worker runs the same stage functions on it
(`fvedit.pipeline.invert`, `fvedit.pipeline.decode`), so the output does not depend on the
number of workers.
"""
