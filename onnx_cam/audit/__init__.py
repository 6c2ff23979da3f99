"""Audit jobs: explain whole datasets into a Zarr store, resumable, on one machine or a Dask
cluster. `run(...)` writes a store, `AuditStore(url)` reads one."""

from .datasets import open_dataset
from .job import run
from .store import AuditStore

__all__ = ["run", "AuditStore", "open_dataset"]
