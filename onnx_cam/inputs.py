"""Readers of input files: arrays, images and CSV signals, as float32 batches (N, ...).

Conventions
-----------
* ``.npy`` / ``.npz``: taken as they are, batch first and in the model's layout (never
  unpickled). An ``.npz`` contributes every array, in name order. ``Preprocess`` does not
  apply to them.
* Images (``.png .jpg .jpeg .bmp .tif .tiff``): one item each. Pillow converts the image to
  ``mode`` ("RGB": 3 channels, alpha dropped; "L": 1 channel, luminance), resizes it to
  ``size`` (H, W) with bilinear filtering (Pillow's, as torchvision's ``Resize`` on a PIL
  image), then each value becomes ``(pixel * scale - mean[c]) / std[c]``, and the channel
  axis goes first (C, H, W) or last (H, W, C). Single-channel 16-bit / 32-bit / float images
  keep their values (no 8-bit conversion) with mode "L": give ``scale`` to suit them.
* CSV signals (``.csv`` comma-separated, ``.tsv`` tab-separated): one file is one item. One
  column per channel, one row per sample, so a file of T rows and C columns is the item
  (C, T) (or (T, C) channels-last). With ``transpose=True`` it is one row per channel
  instead. The first row is a header when any of its cells is not a number; empty lines are
  skipped; every other row must have the same number of cells.
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, MemoryBudgetError, OnnxCamError
from .memory import gib, memory_budget

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SIGNAL_SUFFIXES = (".csv", ".tsv")
SUFFIXES = ARRAY_SUFFIXES + IMAGE_SUFFIXES + SIGNAL_SUFFIXES
_MODES = {"RGB": 3, "L": 1}
#: the Pillow decoders images are opened with, whatever their suffix says: none of them
#: hands the file to another program (Pillow's EPS plugin runs Ghostscript)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # single channel, more than 8 bits


@dataclass(frozen=True)
class Preprocess:
    """How images and CSV signals become model inputs (arrays are taken as they are).

    size: (H, W) images are resized to (bilinear), None to keep their size.
    scale, mean, std: each image value becomes ``(pixel * scale - mean[c]) / std[c]``;
        mean / std hold one value per channel, or one for all; None: 0 and 1.
    channels_first: items (C, H, W) / (C, T) when True, (H, W, C) / (T, C) when False
        (Keras models).
    mode: "RGB" (3 channels) or "L" (grayscale, 1 channel) for images.
    transpose: CSV files hold one row per channel (default: one column per channel).
    """

    size: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels_first: bool = True
    mode: str = "RGB"
    transpose: bool = False

    def __post_init__(self):
        if self.mode not in _MODES:
            raise InputError(f"Image mode {self.mode!r} is not one of {list(_MODES)}; use 'RGB' "
                             "for 3-channel models and 'L' (grayscale) for 1-channel ones.")
        if self.size is not None:
            size = tuple(int(s) for s in self.size)
            if len(size) != 2 or min(size) < 1:
                raise InputError(f"size={self.size!r} must be two positive numbers (H, W).")
            object.__setattr__(self, "size", size)
        channels = _MODES[self.mode]
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(float(v) for v in np.atleast_1d(value))
            if len(value) not in (1, channels):
                wanted = "one value" if channels == 1 else f"{channels} values or one"
                raise InputError(f"{name} has {len(value)} values; mode {self.mode!r} images "
                                 f"have {channels} channel(s): give {wanted}.")
            object.__setattr__(self, name, value)
        if self.std is not None and 0.0 in self.std:
            raise InputError(f"std={self.std} contains 0; every channel needs a std > 0.")


def preprocess_for(explainer) -> Preprocess:
    """Defaults that fit the explainer's model: its static (H, W) as the image size, grayscale
    for 1 input channel (else RGB), and the model's channel layout."""
    model = explainer.model
    spatial = model.spatial_input_shape
    size = tuple(spatial) if len(spatial) == 2 and None not in spatial else None
    return Preprocess(size=size, mode="L" if model.channels == 1 else "RGB",
                      channels_first=not model.channels_last)


def expand_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The files to read: each path as given, a folder as its readable files in name order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise InputError(f"{path}: the folder holds no input file; onnx-cam reads "
                                 f"{' '.join(SUFFIXES)} files.")
            files.extend(found)
        else:
            files.append(path)
    return files


def read_file(path: str | os.PathLike, preprocess: Preprocess | None = None, *,
              item_shape: Sequence[int | None] | None = None,
              max_memory: int | str | None = None) -> np.ndarray:
    """The items of one file as a float32 array (N, ...); see the module's conventions.

    item_shape: the shape one item must have (None for a free axis), e.g. the model's input
    shape without its batch axis; a file that does not fit raises an InputError naming it.
    max_memory: the memory budget (see onnx_cam.memory.memory_budget); an image or array
    whose header says it needs more is refused before its data is read.
    """
    path = Path(path)
    preprocess = preprocess or Preprocess()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; onnx-cam "
                         f"reads {' '.join(SUFFIXES)}.")
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"{path} {what}; give the path of an input file.")
    if suffix in ARRAY_SUFFIXES:
        x = _read_array(path, memory_budget(max_memory))
    elif suffix in IMAGE_SUFFIXES:
        x = _read_image(path, preprocess, memory_budget(max_memory))[None]
    else:
        x = _read_signal(path, preprocess)[None]
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise InputError(f"{path}: items {np.flatnonzero(bad).tolist()[:20]} contain NaN or "
                         "Inf; clean or drop them before explaining.")
    if item_shape is not None:
        _check_item_shape(path, x.shape[1:], tuple(item_shape), preprocess)
    return x


def read_inputs(paths: Sequence[str | os.PathLike], preprocess: Preprocess | None = None, *,
                item_shape: Sequence[int | None] | None = None) -> np.ndarray:
    """The items of all files (folders: their readable files), in order, as one float32
    array (N, ...); every file must give items of one shape."""
    files = expand_paths(paths)
    if not files:
        raise InputError("No input file given.")
    return concatenate_items(files, [read_file(p, preprocess, item_shape=item_shape)
                                     for p in files])


def concatenate_items(paths: Sequence[str | os.PathLike], arrays: Sequence[np.ndarray]):
    """The arrays read from `paths` as one batch; an InputError names files whose items
    differ in shape."""
    shapes: dict[tuple, list[str]] = {}
    for path, array in zip(paths, arrays):
        shapes.setdefault(array.shape[1:], []).append(os.fspath(path))
    if len(shapes) > 1:
        listed = "; ".join(f"{shape}: {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}"
                           for shape, files in shapes.items())
        raise InputError(f"The input files give items of different shapes ({listed}). Give "
                         "files of one item shape per call; resize images with --size H W "
                         "(Preprocess(size=...)).")
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]


def read_named_arrays(path: str | os.PathLike, names: Sequence[str], *,
                      max_memory: int | str | None = None) -> dict[str, np.ndarray]:
    """A .npz holding one array per input name of a model with several inputs: the arrays by
    name (floats as float32, integers as stored; never unpickled), all of one length."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise InputError(f"{path}: a model with the inputs {list(names)} reads .npz files "
                         "holding one array per input name (np.savez(path, "
                         f"{names[0]}=..., ...)).")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {m.filename.removesuffix(".npy"): m for m in archive.infolist()}
            if sorted(members) != sorted(names):
                raise InputError(f"{path} holds the arrays {sorted(members)}; the model's "
                                 f"inputs are {list(names)}: save one array per input name.")
            headers = []
            for name in names:
                with archive.open(members[name]) as stream:
                    headers.append((f"{path}[{name!r}]", _npy_header(stream, name)))
            for header in headers:
                _check_headers(path, [header], memory_budget(max_memory))
            arrays = {}
            for name in names:
                with archive.open(members[name]) as stream:
                    array = np.lib.format.read_array(stream, allow_pickle=False)
                arrays[name] = array.astype(np.float32) if array.dtype.kind == "f" else array
    except OnnxCamError:
        raise
    except Exception as exc:  # numpy's header and zip parsers fail in many ways on bad bytes
        raise InputError(f"{path} is not a readable .npz file "
                         f"({type(exc).__name__}: {exc}).") from None
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"{path}: its arrays hold different item counts {lengths}; every "
                         "input needs one entry per item (the same first axis length).")
    return arrays


# ---- arrays ---------------------------------------------------------------------------------
def _read_array(path: Path, budget: int) -> np.ndarray:
    """An .npy / .npz file's arrays as one float32 batch. Every header is read and checked
    (dtype, shape, the memory it takes against `budget`) before any array data."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"PK\x03\x04":  # as np.load tells an .npz from an .npy
                handle.seek(0)
                _check_headers(path, [(os.fspath(path), _npy_header(handle))], budget)
                handle.seek(0)
                arrays = [np.lib.format.read_array(handle, allow_pickle=False)]
            else:
                with zipfile.ZipFile(handle) as archive:
                    members = sorted(archive.infolist(), key=lambda m: m.filename)
                    headers = []
                    for member in members:
                        name = f"{path}[{member.filename.removesuffix('.npy')!r}]"
                        with archive.open(member) as stream:
                            headers.append((name, _npy_header(stream, name)))
                    _check_headers(path, headers, budget)
                    arrays = []
                    for member in members:
                        with archive.open(member) as stream:
                            arrays.append(np.lib.format.read_array(stream, allow_pickle=False))
    except OnnxCamError:
        raise
    except Exception as exc:  # numpy's header and zip parsers fail in many ways on bad bytes
        raise InputError(f"{path} is not a readable {path.suffix} array "
                         f"({type(exc).__name__}: {exc}).") from None
    if len(arrays) == 1:
        return arrays[0].astype(np.float32, copy=False)
    return np.concatenate(arrays, dtype=np.float32)


def _npy_header(stream, name: str | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy header, leaving the data unread."""
    if stream.read(6) != b"\x93NUMPY":
        if name is None:  # what np.load would unpickle
            raise InputError(f"{stream.name} is neither a .npy nor an .npz file (numpy would "
                             "have to unpickle it, which onnx-cam never does). Save arrays "
                             "with np.save or np.savez.")
        raise InputError(f"{name} is not an .npy array; save arrays with np.savez.")
    version = tuple(stream.read(2))
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(stream)
    return shape, dtype


def _check_headers(path: Path, headers: list, budget: int) -> None:
    """Refuse arrays onnx-cam cannot take, from their headers: not real numbers, scalars, no
    items at all, or more memory than the budget."""
    if not headers:
        raise InputError(f"{path} holds no array; save at least one with np.savez.")
    for name, (shape, dtype) in headers:
        if dtype.hasobject:
            raise InputError(f"{name} holds Python objects (an object array, stored pickled); "
                             "onnx-cam never unpickles. Save a numeric array: np.save(path, "
                             "np.asarray(x, dtype='float32')).")
        if dtype.kind not in "biuf":
            raise InputError(f"{name} has dtype {dtype}; give real numbers "
                             "(float32 preferably).")
        if not shape:
            raise InputError(f"{name} is a scalar; give arrays shaped (N, ...), batch first.")
        if min(shape) < 0:
            raise InputError(f"{name} declares the shape {shape}: the file is damaged.")
    shapes = [shape for _, (shape, _) in headers]
    if len({shape[1:] for shape in shapes}) > 1:
        raise InputError(f"{path}: its arrays have different item shapes "
                         f"{sorted({shape[1:] for shape in shapes})}; keep arrays of one item "
                         "shape per file.")
    items, item = sum(shape[0] for shape in shapes), shapes[0][1:]
    if items == 0 or 0 in item:
        raise InputError(f"{path} holds no values (arrays shaped {[list(s) for s in shapes]}); "
                         "give at least one item with at least one value, batch first.")
    stored = sum(math.prod(shape) * dtype.itemsize for _, (shape, dtype) in headers)
    as_float32 = items * math.prod(item) * 4
    # np.load's array is the result when it is the only one and float32 already
    needed = stored if len(headers) == 1 and headers[0][1][1] == np.float32 else (
        stored + as_float32)
    if needed > budget:
        raise MemoryBudgetError(
            f"{path} holds {items} items of shape {item}: reading them as float32 "
            f"takes {gib(needed)}, more than the memory budget of {gib(budget)} (max_memory= "
            "or ONNX_CAM_MAX_MEMORY). Split the file into smaller ones, or raise the budget.")


# ---- images ---------------------------------------------------------------------------------
def _read_image(path: Path, pre: Preprocess, budget: int) -> np.ndarray:
    """One image as (C, H, W) or (H, W, C) float32; its header is checked against `budget`
    before its pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise InputError(f"{path} holds {image.n_frames} frames (an image stack); "
                                 "onnx-cam reads single images. Save volumes as .npy arrays.")
            width, height = image.size
            needed = width * height * _MODES[pre.mode] * 4
            if needed > budget:
                raise MemoryBudgetError(
                    f"{path} is {width} x {height} pixels: as {_MODES[pre.mode]}-channel float32 "
                    f"it takes {gib(needed)}, more than the memory budget of {gib(budget)} "
                    "(max_memory= or ONNX_CAM_MAX_MEMORY). Downscale the image, or raise the "
                    "budget.")
            image.load()
            image = _converted(path, image, pre.mode)
            if pre.size is not None and image.size != pre.size[::-1]:
                image = image.resize(pre.size[::-1], Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
    except (OnnxCamError, MemoryError):
        raise
    except Exception as exc:  # Pillow's decoders fail in many ways on bad bytes
        if isinstance(exc, UnidentifiedImageError):
            raise InputError(f"{path} is not a readable image: no {', '.join(IMAGE_FORMATS)} "
                             "image is found in it (onnx-cam opens no other format); check "
                             "the file, or convert it to PNG.") from None
        raise InputError(f"{path} is not a readable image ({type(exc).__name__}: {exc}); "
                         "check the file, or convert it to PNG.") from None
    pixels = pixels.reshape(*pixels.shape[:2], -1) * np.float32(pre.scale)  # (H, W, C)
    if pre.mean is not None:
        pixels -= np.asarray(pre.mean, np.float32)
    if pre.std is not None:
        pixels /= np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(pixels, -1, 0)) if pre.channels_first else pixels


def _converted(path: Path, image, mode: str):
    """The image in `mode`; single-channel images deeper than 8 bits keep their values."""
    if image.mode in _HIGH_DEPTH_MODES:
        if mode != "L":
            raise InputError(f"{path} is a single-channel {image.mode} image (more than 8 bits) "
                             "and the model takes RGB; give it to a 1-channel model "
                             "(--grayscale) or save the input as a .npy array.")
        return image.convert("F")  # float32 values, resized without rounding
    return image if image.mode == mode else image.convert(mode)


# ---- CSV signals ----------------------------------------------------------------------------
def _read_signal(path: Path, pre: Preprocess) -> np.ndarray:
    """One CSV / TSV file as (C, T) or (T, C) float32."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(line, row) for line, row in enumerate(csv.reader(handle, delimiter=delimiter),
                                                           start=1) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path} is not a readable text table ({exc}).") from None
    if rows and not all(_is_number(cell) for cell in rows[0][1]):
        rows = rows[1:]  # header
    if not rows:
        raise InputError(f"{path} holds no numbers; a CSV signal has one row per sample and one "
                         "column per channel.")
    width = len(rows[0][1])
    values = np.empty((len(rows), width), np.float32)
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise InputError(f"{path}, line {line}: {len(row)} cells where the rows above have "
                             f"{width}; every row needs one value per column.")
        try:
            values[r] = [float(cell) for cell in row]
        except ValueError:
            bad = next(c for c, cell in enumerate(row, start=1) if not _is_number(cell))
            raise InputError(f"{path}, line {line}, column {bad}: {row[bad - 1]!r} is not a "
                             "number; only the first row may be a header.") from None
    channels_first = values if pre.transpose else values.T
    return np.ascontiguousarray(channels_first if pre.channels_first else channels_first.T)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


# ---- fitting the model ----------------------------------------------------------------------
def _check_item_shape(path: Path, got: tuple, want: tuple, pre: Preprocess) -> None:
    """An InputError naming `path` when its items cannot fit `want` (None: any size)."""
    def fits(shape):
        return len(shape) == len(want) and all(w is None or w == g for w, g in zip(want, shape))

    if fits(got):
        return
    suffix = path.suffix.lower()
    wanted = "(" + ", ".join("any" if w is None else str(w) for w in want) + ")"
    if suffix in ARRAY_SUFFIXES:
        hint = ("Arrays are used as they are: batch first, then one item in the model's "
                "layout.")
    elif suffix in SIGNAL_SUFFIXES:
        if len(got) == 2 and fits(got[::-1]):
            hint = ("The file seems to hold one column per channel: leave out --csv-transpose "
                    "(Preprocess(transpose=False))." if pre.transpose else
                    "The file seems to hold one row per channel: pass --csv-transpose "
                    "(Preprocess(transpose=True)).")
        else:
            hint = "A CSV file is one item: one column per channel, one row per sample."
    elif len(got) != len(want):
        hint = "An image is one (C, H, W) item: images fit 2D models only; give .npy arrays."
    else:
        hint = _image_hint(got, want, pre)
    raise InputError(f"{path}: its items are shaped {got}, the model takes {wanted}. {hint}")


def _image_hint(got: tuple, want: tuple, pre: Preprocess) -> str:
    c_axis = 0 if pre.channels_first else -1
    other = (*got[1:], got[0]) if pre.channels_first else (got[-1], *got[:-1])
    if all(w is None or w == g for w, g in zip(want, other)):
        flag = "--channels-last" if pre.channels_first else "channels first (no --channels-last)"
        return f"The model takes the other channel layout: use {flag} (Preprocess.channels_first)."
    if want[c_axis] is not None and want[c_axis] != got[c_axis]:
        return (f"The model takes {want[c_axis]} channel(s): use --grayscale for 1 channel, RGB "
                "(the default) for 3 (Preprocess.mode).")
    spatial = want[1:] if pre.channels_first else want[:-1]
    size = " ".join(map(str, spatial)) if None not in spatial else "H W"
    return f"Resize the images to the model's size with --size {size} (Preprocess.size)."
