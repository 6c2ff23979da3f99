"""A job over a dataset in chunks (the unit of resume and of Dask): their bounds, the items
done so far, and the chunks run on a Dask cluster."""

from __future__ import annotations

from .datasets import Dataset


class Chunked:
    """A job over `dataset` in chunks of `chunk_items` items (the unit of resume and Dask)."""

    dataset: Dataset
    chunk_items: int

    @property
    def chunks(self) -> int:
        return -(-len(self.dataset) // self.chunk_items)

    def bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_items
        return start, min(start + self.chunk_items, len(self.dataset))


class Counter:
    """Items done so far, reported to a progress callback."""

    def __init__(self, done: int, total: int, report):
        self.done, self.total, self.report = done, total, report
        report(done, total)

    def add(self, items: int) -> None:
        self.done += items
        self.report(self.done, self.total)


def run_on_dask(spec, todo: list, done: Counter, scheduler, workers, task) -> None:
    """Run task(spec, t) for every t of `todo` on a Dask cluster; each returns its items."""
    from distributed import Client, LocalCluster, as_completed
    if scheduler is not None:
        client, cluster = Client(scheduler), None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(task, [spec] * len(todo), todo, pure=False)
        for future in as_completed(futures):
            done.add(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
