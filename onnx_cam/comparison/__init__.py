"""Comparison jobs: every explanation method x metric over a dataset, for one or several
models, into a table (Parquet + CSV) and a self-contained HTML page; resumable and on Dask like
audit jobs. `onnx_cam.compare(...)` / `onnx-cam compare`."""

from .job import Comparison, compare

__all__ = ["Comparison", "compare"]
