"""The audit store: one Zarr group (a local folder or any fsspec URL) holding per item the CAMs,
scores, prediction, target and score ranges, a manifest, per-chunk done marks, dataset
statistics and a Parquet summary.

    STORE/
      zarr.json                      group attributes: {"onnx_cam_audit": manifest}
      logits, probs                  (N, K) float32
      predicted, target, foil, label (N,) int64  (-1: none / failed)
      failed (N,) bool, error (N,) str           items that could not be read or explained
      flags (N,) uint8                           onnx_cam.RowFlag bits (NaN / Inf, zero gradient)
      cams/<method>/<layer>          (N, *input_spatial) float16 in [0, 1], chunked by item
      score_range/<method>/<layer>   (N, 2) float32
      chunk_done                     (chunks,) uint8, one Zarr chunk per job chunk
      stats/...                      written when every chunk is done (see stats.py)
      summary.parquet                one row per item (see stats.py)

A job chunk's arrays are written first and its done mark last, each Zarr chunk file appearing
whole (zarr writes a temporary file and renames it); a job killed at any instant leaves chunks
that are either marked done and complete, or unmarked and redone on resume.
"""

from __future__ import annotations

import json
import os
import socket
from urllib.parse import quote, unquote

import numpy as np

from ..errors import StoreError

MANIFEST_KEY = "onnx_cam_audit"
STORE_FORMAT = 1
# Zarr chunks of the CAM arrays stay near this size (items per chunk divides the job chunk,
# so two job chunks never write one Zarr chunk).
CAM_CHUNK_BYTES = 8 << 20


def node_name(layer: str) -> str:
    """A layer name as one Zarr node name (ONNX tensor names hold "/")."""
    return quote(layer, safe="")


def map_path(group: str, method: str, layer: str) -> str:
    return f"{group}/{method}/{node_name(layer)}"


def layer_from_node(name: str) -> str:
    return unquote(name)


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


class AuditStore:
    """Read access to a finished (or running) audit: `manifest`, the arrays by name,
    `cams(method, layer)`, `maps` (every (method, layer)), `summary()` (a pyarrow Table)."""

    def __init__(self, url: str | os.PathLike, *, mode: str = "r"):
        import zarr
        self.url = os.fspath(url)
        try:
            self.group = zarr.open_group(self.url, mode=mode)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise StoreError(f"{self.url!r} is not an audit store ({exc}).") from None
        if mode == "r" and MANIFEST_KEY not in self.group.attrs:
            raise StoreError(f"{self.url!r} is a Zarr group but not an audit store written by "
                             "onnx-cam audit (it has no manifest).")

    @property
    def manifest(self) -> dict:
        return dict(self.group.attrs[MANIFEST_KEY])

    @property
    def maps(self) -> list[tuple[str, str]]:
        return [(m["method"], m["layer"]) for m in self.manifest["maps"]]

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    def __getitem__(self, name: str):
        return self.group[name]

    def cams(self, method: str, layer: str):
        """The (N, *input_spatial) Zarr array of one method at one layer."""
        return self.group[map_path("cams", method, layer)]

    def score_ranges(self, method: str, layer: str):
        return self.group[map_path("score_range", method, layer)]

    def summary(self):
        """The per-item summary table (pyarrow.Table)."""
        import pyarrow.parquet as pq
        fs, path = _fs_path(self.url)
        with fs.open(f"{path}/summary.parquet", "rb") as handle:
            return pq.read_table(handle)

    def __len__(self) -> int:
        return int(self.group["predicted"].shape[0])

    def __repr__(self) -> str:
        m = self.manifest
        return (f"AuditStore({self.url!r}, {len(self)} items, maps={self.maps}, "
                f"status={m.get('status')})")


def _fs_path(url: str):
    from fsspec.core import url_to_fs
    return url_to_fs(url)


def cam_chunk_items(chunk_items: int, item_bytes: int) -> int:
    """The largest divisor of the job chunk whose Zarr chunk stays under CAM_CHUNK_BYTES."""
    best = 1
    for k in range(1, chunk_items + 1):
        if chunk_items % k == 0 and k * item_bytes <= CAM_CHUNK_BYTES:
            best = k
    return best


def identity_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The fields where two manifests' identities differ, as readable paths."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: store has {json.dumps(a)}, this job {json.dumps(b)}")
    return diffs


def remove_partial_files(url: str) -> None:
    """Temporary files of Zarr writes cut short by a kill (a local store only)."""
    if not is_local(url):
        return
    for root, _, files in os.walk(local_path(url)):
        for name in files:
            if name.endswith(".partial"):
                os.unlink(os.path.join(root, name))


def remove_store(url: str) -> None:
    fs, path = _fs_path(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def store_state(url: str) -> str:
    """"missing", "empty" (an empty folder), "audit" or "other" (something else is there)."""
    fs, path = _fs_path(url)
    if not fs.exists(path):
        return "missing"
    if not fs.isdir(path):
        return "other"
    if all(entry.rstrip("/").endswith("/.lock") for entry in fs.ls(path, detail=False)):
        return "empty"  # nothing but this job's own lock
    try:
        AuditStore(url)
    except StoreError:
        return "other"
    return "audit"


def write_parquet_atomic(url: str, table) -> None:
    """Write STORE/summary.parquet so that it appears whole or not at all."""
    import pyarrow.parquet as pq
    fs, path = _fs_path(url)
    final, tmp = f"{path}/summary.parquet", f"{path}/summary.parquet.tmp"
    with fs.open(tmp, "wb") as handle:
        pq.write_table(table, handle)
    fs.mv(tmp, final)


class StoreLock:
    """STORE/.lock: one job at a time per (local) store. A lock left by a process that no
    longer runs on this host is stale and taken over; one held by a live process refuses."""

    def __init__(self, url: str):
        self.path = os.path.join(local_path(url), ".lock") if is_local(url) else None

    def __enter__(self):
        if self.path is None:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and _alive(holder):
                    raise StoreError(
                        f"Another audit job (pid {holder['pid']} on {holder['host']}) is "
                        f"writing {os.path.dirname(self.path)!r}; wait for it, or stop it and "
                        "run again (a lock left by a dead job is taken over).") from None
                os.unlink(self.path)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            return self
        raise StoreError(f"Could not take the lock {self.path!r}; remove it if no job runs.")

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None  # half-written by a job killed while taking it: stale

    def __exit__(self, *exc):
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell for another host: assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, KeyError):
        return True
    return True


def done_chunks(group) -> np.ndarray:
    return np.asarray(group["chunk_done"][:]).astype(bool)
