"""Datasets an audit job reads in chunks: a .npy file (memory-mapped), a Zarr array, an HDF5
dataset, a folder of files, or an in-memory array. Nothing is loaded whole.

Every dataset is picklable (a Dask worker re-opens the file on its first read) and reads
items [start, stop) as float32 with a leading item axis; an item that cannot be read is
returned as zeros with the reason in `failures`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..inputs import expand_paths, read_file


@dataclass
class Chunk:
    """Items [start, stop) of a dataset; failures maps an item's offset in the chunk to why
    it could not be read (its row in `x` is zeros)."""

    x: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)
    side: dict[str, np.ndarray] | None = None  # a model's other inputs (InputsDataset)


class Dataset:
    """Base class: `kind`, `source`, `shape` (N, *item_shape), `read(start, stop)`."""

    kind = "array"
    source = "<memory>"
    shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> Chunk:
        x = np.asarray(self._slice(start, stop), dtype=np.float32)
        return Chunk(np.ascontiguousarray(x))

    def read_finite(self, start: int, stop: int) -> Chunk:
        """Items [start, stop) with the unreadable ones and those holding NaN / Inf (in any
        input) set to zeros, and why each of those failed (by offset in the chunk)."""
        read = self.read(start, stop)
        x, failures, side = read.x, dict(read.failures), dict(read.side or {})
        for name, values in [(None, x), *side.items()]:
            finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
            for i in np.flatnonzero(~finite):
                failures.setdefault(int(i), "the item contains NaN or Inf" if name is None
                                    else f"input {name!r} contains NaN or Inf")
        if failures:
            bad = sorted(failures)
            x = x.copy()
            x[bad] = 0.0
            for name, values in side.items():
                side[name] = values.copy()
                side[name][bad] = 0
        return Chunk(x, failures, side or None)

    def _slice(self, start: int, stop: int):
        raise NotImplementedError

    def item_names(self, start: int, stop: int) -> list[str] | None:
        """Names of the items (file names for folders), None when items have none."""
        return None

    def describe(self) -> dict:
        """What identifies the data in an audit manifest: where it came from, its shape and a
        digest of its first and last items (a cheap guard against a changed file)."""
        digest = hashlib.sha256()
        for i in sorted({0, len(self) - 1}):
            digest.update(self.read(i, i + 1).x.tobytes())
        return {"kind": self.kind, "source": self.source, "shape": list(self.shape),
                "edge_items_sha256": digest.hexdigest()}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None  # file handles do not travel; re-opened on the next read
        return state


class ArrayDataset(Dataset):
    """An array already in memory (local jobs only: it is not sent to a cluster)."""

    def __init__(self, array: np.ndarray):
        self._array = np.asarray(array)
        self.shape = tuple(self._array.shape)
        self._handle = None

    def _slice(self, start, stop):
        return self._array[start:stop]


class NpyDataset(Dataset):
    """A .npy file read chunk by chunk with plain file reads (a memory map would keep every
    page read so far in the process's resident memory)."""

    kind = "npy"

    def __init__(self, path: str):
        self.source = os.path.abspath(path)
        self._handle = None
        try:  # the header only: shape, dtype, layout and where the data starts
            mapped = np.load(self.source, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"Cannot read {self.source!r} as a .npy array ({exc}); give a "
                             ".npy file of shape (N, ...) of numbers.") from None
        shape, dtype, self._offset = mapped.shape, mapped.dtype, mapped.offset
        fortran = mapped.ndim > 1 and not mapped.flags.c_contiguous
        del mapped
        if dtype.hasobject or fortran or not shape:
            raise InputError(f"{self.source!r} holds a {'Fortran-ordered ' if fortran else ''}"
                             f"array of dtype {dtype} and shape {shape}; give a C-ordered "
                             "numeric array of shape (N, ...).")
        self.shape, self._dtype = tuple(shape), dtype

    def _slice(self, start, stop):
        item = int(np.prod(self.shape[1:])) * self._dtype.itemsize
        with open(self.source, "rb") as f:
            f.seek(self._offset + start * item)
            data = f.read((stop - start) * item)
        if len(data) != (stop - start) * item:
            raise InputError(f"{self.source!r} is shorter than its header says (items "
                             f"{start}-{stop - 1} are cut off): the file is truncated.")
        return np.frombuffer(data, self._dtype).reshape(stop - start, *self.shape[1:])


class ZarrDataset(Dataset):
    kind = "zarr"

    def __init__(self, url: str, key: str | None):
        self.source, self.key = url, key
        self._handle = None
        self.shape = tuple(self._open().shape)

    def _open(self):
        if self._handle is None:
            import zarr
            try:
                node = zarr.open(self.source, mode="r")
            except (FileNotFoundError, ValueError, KeyError) as exc:
                raise InputError(f"Cannot open {self.source!r} as a Zarr store ({exc}).") \
                    from None
            if isinstance(node, zarr.Group):
                node = node[_pick(self.source, self.key,
                                  sorted(name for name, _ in node.arrays()))]
            self._handle = node
        return self._handle

    def _slice(self, start, stop):
        return self._open()[start:stop]


class Hdf5Dataset(Dataset):
    kind = "hdf5"

    def __init__(self, path: str, key: str | None):
        self.source, self.key = os.path.abspath(path), key
        self._handle = None
        self.shape = tuple(self._open().shape)

    def _open(self):
        if self._handle is None:
            import h5py
            try:
                f = h5py.File(self.source, "r")
            except OSError as exc:
                raise InputError(f"Cannot open {self.source!r} as an HDF5 file ({exc}).") \
                    from None
            names = []
            f.visititems(lambda name, obj: names.append(name)
                         if isinstance(obj, h5py.Dataset) else None)
            self._handle = f[_pick(self.source, self.key, names)]
        return self._handle

    def _slice(self, start, stop):
        return self._open()[start:stop]


def _pick(source: str, key: str | None, names: list[str]) -> str:
    """The array `key` names in a Zarr group / HDF5 file, or its only array."""
    if key is None and len(names) != 1:
        raise InputError(f"{source!r} holds the arrays {names}; name one with key= "
                         "(CLI: --key).")
    key = key or names[0]
    if key not in names:
        raise InputError(f"{source!r} has no array {key!r}; it has {names}.")
    return key


class FolderDataset(Dataset):
    """One item per file, files in name order; unreadable files are recorded, not fatal."""

    kind = "folder"

    def __init__(self, path: str, item_shape: tuple[int, ...], preprocess=None):
        self.source = os.path.abspath(path)
        self.files = [p.name for p in expand_paths([path])]  # readable files, by name
        self.preprocess = preprocess
        self.shape = (len(self.files), *item_shape)
        self._handle = None

    def read(self, start, stop) -> Chunk:
        x = np.zeros((stop - start, *self.shape[1:]), np.float32)
        failures = {}
        for offset, name in enumerate(self.files[start:stop]):
            try:
                item = read_file(os.path.join(self.source, name), self.preprocess)
                if item.shape[0] != 1 and item.ndim == len(self.shape) - 1:
                    item = item[None]
                if item.shape[1:] != self.shape[1:] or len(item) != 1:
                    raise InputError(f"holds shape {item.shape}; one item of shape "
                                     f"{self.shape[1:]} was expected")
                x[offset] = item[0]
            except InputError as exc:
                failures[offset] = f"{name}: {exc}"
            except Exception as exc:  # noqa: BLE001  a decoder's own failure on a bad file
                # (e.g. numpy on an array of 0 items) is that item's, never the whole job's
                failures[offset] = f"{name}: cannot be read ({type(exc).__name__}: {exc})"
        return Chunk(x, failures)

    def item_names(self, start, stop):
        return self.files[start:stop]


class NpzMemberDataset(Dataset):
    """One array of an uncompressed .npz (np.savez), read chunk by chunk by seeking in it."""

    kind = "npz"

    def __init__(self, path: str, name: str):
        self.source, self.name = os.path.abspath(path), name
        self._handle = None
        with self._member() as stream:
            version = tuple(stream.read(8)[6:8])
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(stream)
            self._offset = stream.tell()
        if dtype.hasobject or fortran or not shape:
            raise InputError(f"{self.source}[{name!r}] holds a {'Fortran-ordered ' * fortran}"
                             f"array of dtype {dtype} and shape {shape}; give a C-ordered "
                             "numeric array of shape (N, ...).")
        self.shape, self._dtype = tuple(shape), dtype

    def _member(self):
        import zipfile
        archive = zipfile.ZipFile(self.source)
        return archive.open(f"{self.name}.npy")

    def _slice(self, start, stop):
        item = int(np.prod(self.shape[1:])) * self._dtype.itemsize
        with self._member() as stream:
            stream.seek(self._offset + start * item)
            data = stream.read((stop - start) * item)
        return np.frombuffer(data, self._dtype).reshape(stop - start, *self.shape[1:])


class InputsDataset(Dataset):
    """One array per input of a model with several inputs, read together: `x` is the
    explained input's items, `side` the others' (the same items)."""

    kind = "inputs"

    def __init__(self, source: str, parts: dict[str, Dataset], explained: str):
        self.source, self.parts, self.explained = source, parts, explained
        lengths = {name: len(part) for name, part in parts.items()}
        if len(set(lengths.values())) != 1:
            raise InputError(f"{source!r}: its arrays hold different item counts {lengths}; "
                             "every input needs one entry per item (the same first axis).")
        self.shape = parts[explained].shape
        self._handle = None

    def read(self, start, stop) -> Chunk:
        side = {name: np.ascontiguousarray(part._slice(start, stop))
                for name, part in self.parts.items() if name != self.explained}
        return Chunk(self.parts[self.explained].read(start, stop).x, side=side)

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "explained": self.explained,
                "inputs": {name: part.describe() for name, part in self.parts.items()}}


def open_inputs(source, names: list[str], explained: str) -> InputsDataset:
    """The dataset of a model with several inputs: a .npz (np.savez, uncompressed) or a Zarr
    group (path or URL) holding one array per input name, or a dict of arrays."""
    if isinstance(source, dict):
        found, parts = list(source), {k: ArrayDataset(v) for k, v in source.items()}
        text = "<memory>"
    else:
        text = os.fspath(source)
        suffix = Path(text.rstrip("/")).suffix.lower()
        if suffix == ".npz":
            if not os.path.isfile(text):
                raise InputError(f"The dataset {text!r} does not exist.")
            import zipfile
            try:
                with zipfile.ZipFile(text) as archive:
                    members = archive.infolist()
            except (OSError, zipfile.BadZipFile) as exc:
                raise InputError(f"Cannot read {text!r} as a .npz file ({exc}).") from None
            if any(m.compress_type != zipfile.ZIP_STORED for m in members):
                raise InputError(f"{text!r} is compressed (np.savez_compressed), so it cannot "
                                 "be read chunk by chunk; save it with np.savez, or as a Zarr "
                                 "group.")
            found = [m.filename.removesuffix(".npy") for m in members]
            parts = {k: NpzMemberDataset(text, k) for k in found if k in names}
        elif "://" in text or suffix == ".zarr" or (Path(text) / "zarr.json").exists():
            import zarr
            try:
                group = zarr.open_group(text, mode="r")
            except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
                raise InputError(f"Cannot open {text!r} as a Zarr group ({exc}).") from None
            found = sorted(name for name, _ in group.arrays())
            parts = {k: ZarrDataset(text, k) for k in found if k in names}
        else:
            raise InputError(f"The model takes the inputs {names}: give a .npz file or a Zarr "
                             "group holding one array per input name (same first axis).")
    if sorted(found) != sorted(names):
        raise InputError(f"{text!r} holds the arrays {sorted(found)}; the model's inputs are "
                         f"{names}: store one array per input name, nothing else.")
    return InputsDataset(text, {name: parts[name] for name in names}, explained)


def open_dataset(source, *, key: str | None = None, item_shape: tuple[int, ...] | None = None,
                 preprocess=None) -> Dataset:
    """The dataset behind `source`: an array, a .npy path, a Zarr store (path or fsspec URL,
    `key` names the array in a group), an .h5 / .hdf5 file (`key` names the dataset) or a
    folder of files (`item_shape` is the model's item shape; `preprocess` as onnx_cam.inputs)."""
    if isinstance(source, Dataset):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return ArrayDataset(source)
    text = os.fspath(source)
    suffix = Path(text.rstrip("/")).suffix.lower()
    if "://" in text or suffix == ".zarr":
        return ZarrDataset(text, key)
    if not os.path.exists(text):
        raise InputError(f"The dataset {text!r} does not exist.")
    if suffix == ".npy":
        return NpyDataset(text)
    if suffix in (".h5", ".hdf5"):
        return Hdf5Dataset(text, key)
    if os.path.isdir(text):
        if (Path(text) / "zarr.json").exists() or (Path(text) / ".zarray").exists():
            return ZarrDataset(text, key)
        if item_shape is None or any(d is None for d in item_shape):
            raise InputError(f"Reading the folder {text!r} needs the item shape, and the model "
                             f"input's is not fixed ({item_shape}); convert the files to one "
                             ".npy or Zarr array first.")
        return FolderDataset(text, item_shape, preprocess)
    raise InputError(f"Cannot read {text!r} as a dataset: give a .npy file, a .zarr store, an "
                     ".h5 / .hdf5 file or a folder of files.")


def read_labels(labels, n: int, class_names: list[str] | None) -> np.ndarray | None:
    """Labels as an (n,) int64 array: from an array, a .npy file, or a text / CSV file with one
    label per line (class indices or class names)."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        path = os.fspath(labels)
        if path.endswith(".npy"):
            labels = np.load(path, allow_pickle=False)
        else:
            try:
                lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"Cannot read the labels file {path!r} ({exc}).") from None
            labels = [_label(v, class_names, path) for v in lines]
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise InputError(f"Labels must be {n} class indices (one per item); got an array of "
                         f"shape {labels.shape} and dtype {labels.dtype}.")
    return labels.astype(np.int64)


def _label(value: str, class_names, path) -> int:
    if value.lstrip("-").isdigit():
        return int(value)
    if class_names and value in class_names:
        return class_names.index(value)
    raise InputError(f"The label {value!r} in {path!r} is neither a class index nor one of the "
                     f"class names {class_names}.")
