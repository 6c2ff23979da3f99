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

Every write is ordered so that a job killed at any instant leaves a store the same command
recognises and finishes:
  1. STORE/.lock is taken (an flock held for the job's life) before anything else is written;
  2. the root zarr.json is written whole with the manifest (status "creating"): from then on the
     folder is this job's; a folder holding nothing but the lock is still empty;
  3. everything else left in the folder is removed and the arrays are created; the manifest
     then says "running" (a job killed before that restarts from step 3);
  4. a job chunk's arrays are written first and its done mark last, each Zarr file appearing
     whole (zarr writes a temporary file and renames it): a chunk is either marked done and
     complete, or unmarked and redone;
  5. statistics and summary are (re)written, every group's metadata is checked, and the
     manifest says "complete".
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import re
import socket
import sys
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from urllib.parse import quote, unquote

import numpy as np

from ..errors import StoreError

MANIFEST_KEY = "onnx_cam_audit"
STORE_FORMAT = 1
# Zarr chunks of the CAM arrays stay near this size (items per chunk divides the job chunk,
# so two job chunks never write one Zarr chunk).
CAM_CHUNK_BYTES = 8 << 20
LOCK, ROOT = ".lock", "zarr.json"
# The temporary file zarr writes the root metadata to (a job killed in that write leaves it).
ROOT_PARTIAL = re.compile(r"zarr\.[0-9a-f]{32}\.partial$")


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


def store_state(url: str) -> str:
    """"missing"; "empty" (a folder holding at most a lock and the temporary file of a root
    write cut short); "audit" (a root zarr.json with a manifest, at any stage of the module
    docstring's order); "other" (something that is not onnx-cam's)."""
    fs, path = _fs_path(url)
    if not fs.exists(path):
        return "missing"
    if not fs.isdir(path):
        return "other"
    if all(_name(entry) == LOCK or ROOT_PARTIAL.match(_name(entry))
           for entry in fs.ls(path, detail=False)):
        return "empty"
    try:
        AuditStore(url)
    except StoreError:
        return "other"
    return "audit"


def _name(entry: str) -> str:
    return entry.rstrip("/").rsplit("/", 1)[-1]


def discard_root(url: str) -> None:
    """Remove the root metadata (or the file at the store's path): the folder stops being the
    previous audit's before a new manifest takes its place."""
    fs, path = _fs_path(url)
    if fs.isfile(path):
        fs.rm(path)
    elif fs.exists(f"{path}/{ROOT}"):
        fs.rm(f"{path}/{ROOT}")


def clear_store(url: str) -> None:
    """Remove everything in the store's folder but its lock and root metadata."""
    fs, path = _fs_path(url)
    for entry in fs.ls(path, detail=False):
        if _name(entry) not in (LOCK, ROOT):
            fs.rm(entry, recursive=True)


def repair_group_metadata(url: str) -> None:
    """Write the metadata of every group above an array that lacks it (zarr writes an array's
    parents concurrently with the array, so a failed write can leave the array without its
    group)."""
    import zarr
    fs, path = _fs_path(url)
    root, missing = path.rstrip("/"), set()
    for folder, dirs, files in fs.walk(path):
        if ROOT in files and _node_type(fs, f"{folder}/{ROOT}") == "array":
            dirs.clear()  # its chunks
            parent = folder.rstrip("/").rsplit("/", 1)[0]
            while len(parent) > len(root):
                if not fs.exists(f"{parent}/{ROOT}"):
                    missing.add(parent[len(root) + 1:])
                parent = parent.rsplit("/", 1)[0]
    group = zarr.open_group(url, mode="r+")
    for name in sorted(missing, key=len):
        group.require_group(name)


def _node_type(fs, path: str) -> str | None:
    try:
        return json.loads(fs.cat_file(path)).get("node_type")
    except (OSError, ValueError, AttributeError):
        return None


def write_parquet_atomic(url: str, table) -> None:
    """Write STORE/summary.parquet so that it appears whole or not at all."""
    import pyarrow.parquet as pq
    fs, path = _fs_path(url)
    final, tmp = f"{path}/summary.parquet", f"{path}/summary.parquet.tmp"
    with fs.open(tmp, "wb") as handle:
        pq.write_table(table, handle)
    fs.mv(tmp, final)


class StoreLock:
    """STORE/.lock, taken before anything else is written and held (flock) for the job's life:
    one job at a time per local store. The kernel releases the flock when its process dies, so
    a lock left by a killed job is taken over; the file names its holder for the message."""

    def __init__(self, url: str):
        self.path = os.path.join(local_path(url), LOCK) if is_local(url) else None
        self._fd: int | None = None

    def __enter__(self):
        if self.path is None:
            return self
        folder = os.path.dirname(self.path)
        with writing(folder, "Taking the lock"):
            self._fd = self._take(folder)
        return self

    def _take(self, folder: str) -> int:
        try:
            os.makedirs(folder, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreError(f"{folder!r} is a file, not an audit store; choose another path "
                             "or remove the file.") from None
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise StoreError(f"Another audit job ({holder}) is writing {folder!r}; wait for "
                                 "it to end, or stop it and run the same command again.") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # removed by a job that ended meanwhile: lock the new file instead
        holder = _read_holder(fd)
        if holder and holder.get("host") != socket.gethostname():
            os.close(fd)
            raise StoreError(
                f"{self.path!r} names a job on {holder.get('host')} (pid {holder.get('pid')}), "
                "whose lock this host cannot see; remove the file if no job runs there.")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
        except OSError:
            os.unlink(self.path)
            os.close(fd)
            raise
        return fd

    def __exit__(self, *exc):
        if self._fd is not None:
            os.unlink(self.path)  # while still holding it, so no other job holds this file
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> dict | None:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _holder(fd: int) -> str:
    holder = _read_holder(fd)
    if holder is None:
        return "starting"
    return f"pid {holder.get('pid')} on {holder.get('host')}"


def done_chunks(group) -> np.ndarray:
    return np.asarray(group["chunk_done"][:]).astype(bool)


@contextmanager
def writing(url: str, what: str):
    """Turn a failed write (disk full, permissions) into a StoreError naming the store and what
    to do: every write is ordered so that running the same command again loses nothing."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            cause = (f"the disk is full ({exc.strerror}). Free space there (or give another "
                     "store) and run the same command again")
        else:
            cause = (f"{exc}. Fix the cause (permissions, a missing mount) and run the same "
                     "command again")
        raise StoreError(f"{what} in the audit store {url!r} failed: {cause}; nothing done is "
                         "lost (the chunks marked done are kept, only the rest is redone).") \
            from exc


def prepare_store(url: str, identity: dict, overwrite: bool, job: str,
                  manifest_fields: Callable[[], dict],
                  create_arrays: Callable[[object], None]) -> str:
    """Create the store of a job (`job`: "an audit", "a comparison"), or check that an
    existing one belongs to this job (same identity), and bring it to "running" in the order
    the module's docstring describes (every step safe to cut short by a kill). Returns its
    run id."""
    import zarr
    state = store_state(url)
    manifest = None
    if state == "audit":
        manifest = AuditStore(url).manifest
        diffs = identity_differences(manifest["identity"], identity)
        if diffs and not overwrite:
            raise StoreError(
                f"{url!r} holds {job} of another model, dataset or arguments:\n  "
                + "\n  ".join(diffs) + "\nUse the same command to resume it, another store "
                "path, or overwrite=True (--overwrite) to replace it.")
        manifest = None if diffs else manifest
    elif state == "other" and not overwrite:
        raise StoreError(f"{url!r} exists and is not {job} store; choose another "
                         "path, or pass overwrite=True (--overwrite) to replace it.")
    if manifest is None:  # a new store: its manifest first, so the folder is this job's
        discard_root(url)
        manifest = {"identity": identity, "run_id": uuid.uuid4().hex, "status": "creating",
                    **manifest_fields(), "started_at": utc_now(), "finished_at": None,
                    "sessions": [_session()]}
        group = zarr.create_group(url, attributes={MANIFEST_KEY: manifest})
    else:
        group = zarr.open_group(url, mode="r+")
        update_manifest(group, sessions=[*manifest["sessions"], _session()])
    if manifest["status"] == "creating":  # new, or its creation was cut short: (re)create
        clear_store(url)
        create_arrays(group)
        repair_group_metadata(url)
        update_manifest(group, status="running")
    else:
        remove_partial_files(url)
        repair_group_metadata(url)
    return manifest["run_id"]


def update_manifest(group, **fields) -> None:
    """Set `fields` of the manifest (the root's attributes, written whole)."""
    manifest = dict(group.attrs[MANIFEST_KEY])
    manifest.update(fields)
    group.attrs[MANIFEST_KEY] = manifest


def _session() -> dict:
    """This process's entry in the manifest's sessions: when, where and how it took the store."""
    return {"started_at": utc_now(), "host": platform.node(), "pid": os.getpid(),
            "command": sys.argv}


def utc_now() -> str:
    """The time now, as the manifest records it (ISO 8601, UTC, to the second)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# A worker process keeps the arrays of the job it writes open between chunks.
_ARRAYS: dict[tuple, dict] = {}


def job_arrays(url: str, run_id: str) -> dict:
    """The arrays of the store at `url`, opened once per process and job (`run_id`)."""
    key = (url, run_id)
    if key not in _ARRAYS:
        group = AuditStore(url, mode="r+").group
        _ARRAYS.clear()
        _ARRAYS[key] = _LazyArrays(group)
    return _ARRAYS[key]


class _LazyArrays(dict):
    def __init__(self, group):
        super().__init__()
        self.group = group

    def __missing__(self, name):
        self[name] = self.group[name]
        return self[name]
