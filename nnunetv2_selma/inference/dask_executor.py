"""Blocks run here, one after the other, or as ``dask.distributed`` tasks on a local cluster of worker
processes or an existing scheduler: :func:`run_blocks`.

Tasks are module-level functions (found by their module path on the workers) called with a picklable job
and a block; each returns the block's index, and the caller records it as done.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from nnunetv2_selma.inference.block_jobs import run_block


def run_on_dask(job, pending: Sequence, workers: int | None, scheduler: str | None, finished,
                task=None) -> None:
    """Blocks as dask.distributed tasks ``task(job, block)`` (default :func:`run_block`), each returning the
    block's index; ``finished(index)`` is called here as each one completes. ``objects`` uses it too."""
    task = run_block if task is None else task
    from distributed import Client, LocalCluster, as_completed

    # distributed logs ~24 INFO lines per local cluster (start, each worker, shutdown) and, at shutdown, a
    # "killed by signal 9" warning for a worker that the nanny stopped on purpose: keep its warnings while
    # the blocks run (a worker that really dies), silence it while the cluster is closed on purpose
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    cluster = None
    try:
        if scheduler is None:
            dask_logger.setLevel(logging.WARNING)
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.WARNING)
            client = Client(cluster)
        else:
            client = Client(scheduler)
        try:
            futures = [client.submit(task, job, block, key=f"selma-{task.__name__}-{block.index}-{os.getpid()}",
                                     pure=False) for block in pending]
            for future in as_completed(futures):
                finished(future.result())
        finally:
            dask_logger.setLevel(logging.CRITICAL)
            client.close()
            if cluster is not None:
                cluster.close()
    finally:
        dask_logger.setLevel(level)


def run_blocks(task, job, pending: Sequence, workers: int | None, scheduler: str | None, finished) -> None:
    """``task(job, block)`` for every pending block: in this process, in order, when neither ``workers`` nor
    ``scheduler`` is given, else on dask (:func:`run_on_dask`). ``finished(index)`` is called here as each
    block completes, so the caller's progress record is written by one process only."""
    if workers is None and scheduler is None:
        for block in pending:
            finished(task(job, block))
    else:
        run_on_dask(job, pending, workers, scheduler, finished, task=task)


__all__ = ["run_blocks", "run_on_dask"]
