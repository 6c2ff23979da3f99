"""Readers of input files, each checked against the preprocessing written out in numpy."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import peak_in_subprocess
from PIL import Image
from torch import nn

import onnx_cam
from onnx_cam.converters import export_torch
from onnx_cam.errors import InputError, MemoryBudgetError
from onnx_cam.inputs import (
    Preprocess,
    expand_paths,
    preprocess_for,
    read_file,
    read_inputs,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ROOT = Path(__file__).resolve().parents[1]


def normalise(pixels_hwc: np.ndarray, scale=1 / 255, mean=MEAN, std=STD) -> np.ndarray:
    """torchvision's ToTensor + Normalize in numpy, (H, W, C) uint8 -> (C, H, W)."""
    x = (pixels_hwc.astype(np.float64) * scale - np.asarray(mean)) / np.asarray(std)
    return x.transpose(2, 0, 1)


def linear_upsample(a: np.ndarray, axis: int, out: int) -> np.ndarray:
    """Half-pixel-centre linear interpolation along one axis, edges clamped."""
    n = a.shape[axis]
    src = np.clip((np.arange(out) + 0.5) * n / out - 0.5, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (src - lo).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    return np.take(a, lo, axis) * (1 - w) + np.take(a, hi, axis) * w


@pytest.fixture
def rgb(rng):
    return rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)


# ---- images -------------------------------------------------------------------------------
def test_png_is_scaled_normalised_and_channels_first(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    x = read_file(tmp_path / "a.png", Preprocess(mean=MEAN, std=STD))
    assert x.dtype == np.float32 and x.shape == (1, 3, 12, 10)
    np.testing.assert_allclose(x[0], normalise(rgb), rtol=1e-6, atol=1e-6)
    last = read_file(tmp_path / "a.png", Preprocess(mean=MEAN, std=STD, channels_first=False))
    np.testing.assert_allclose(last[0], normalise(rgb).transpose(1, 2, 0), atol=1e-6)


def test_jpeg_pixels_as_decoded(tmp_path):
    ramp = np.linspace(0, 1, 16 * 16 * 3).reshape(16, 16, 3) ** [1.0, 2.0, 0.5]
    rgb = np.round(255 * ramp).astype(np.uint8)  # smooth: JPEG keeps it close
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    decoded = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
    x = read_file(tmp_path / "a.jpg", Preprocess(scale=2 / 255, mean=(1.0,), std=(0.5,)))
    np.testing.assert_allclose(x[0], normalise(decoded, 2 / 255, (1.0,), (0.5,)), atol=1e-5)
    assert np.abs(decoded.astype(int) - rgb).mean() < 3  # it is the image written


def test_grayscale_is_itu_601_luma(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    x = read_file(tmp_path / "a.png", Preprocess(mode="L"))
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert x.shape == (1, 1, 12, 10)
    np.testing.assert_allclose(x[0, 0], luma / 255, atol=0.51 / 255)


def test_resize_is_bilinear_with_half_pixel_centres(tmp_path, rng):
    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "a.png")
    x = read_file(tmp_path / "a.png", Preprocess(size=(12, 15), mode="L", scale=1.0))
    expected = linear_upsample(linear_upsample(grey.astype(np.float64), 0, 12), 1, 15)
    assert x.shape == (1, 1, 12, 15)
    np.testing.assert_allclose(x[0, 0], expected, atol=1.0)  # Pillow rounds to 8 bits


def test_16_bit_image_keeps_its_values(tmp_path):
    values = np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000
    Image.fromarray(values).save(tmp_path / "a.png")
    x = read_file(tmp_path / "a.png", Preprocess(mode="L", scale=1 / 65535))
    np.testing.assert_allclose(x[0, 0], values / 65535, rtol=1e-6)
    with pytest.raises(InputError, match="a.png.*more than 8 bits"):
        read_file(tmp_path / "a.png", Preprocess(mode="RGB"))


def test_alpha_is_dropped(tmp_path, rng):
    rgba = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = read_file(tmp_path / "a.png", Preprocess(scale=1.0))
    np.testing.assert_array_equal(x[0], rgba[..., :3].transpose(2, 0, 1))


@pytest.mark.parametrize("payload", [b"\x89PNG\r\n\x1a\nnot really", b"", b"GIF89a"])
def test_corrupt_image_names_the_file(tmp_path, payload):
    (tmp_path / "broken.png").write_bytes(payload)
    with pytest.raises(InputError, match="broken.png is not a readable image"):
        read_file(tmp_path / "broken.png")


def test_an_image_never_runs_a_program(tmp_path):
    """photo.png holding EPS content made Pillow run the `gs` found on PATH. Pillow is only
    allowed its PNG, JPEG, BMP and TIFF decoders now; the fake gs would leave a marker."""
    (tmp_path / "bin").mkdir()
    marker = tmp_path / "gs_ran"
    gs = tmp_path / "bin" / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\necho 10.0\n")
    gs.chmod(0o755)
    (tmp_path / "photo.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
                                         b"0 0 moveto 8 8 lineto stroke\nshowpage\n")
    code = textwrap.dedent(f"""
        from onnx_cam.inputs import read_file
        from onnx_cam.errors import InputError
        try:
            read_file({str(tmp_path / "photo.png")!r})
        except InputError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT,
                          env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert "photo.png is not a readable image: no PNG, JPEG, BMP, TIFF image" in done.stdout, \
        done.stderr[-2000:]
    assert not marker.exists()


def tiff_with_bad_strip_offsets() -> bytes:
    """A TIFF whose StripOffsets tag is a RATIONAL: Pillow raised a TypeError."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    start = struct.unpack("<I", data[4:8])[0]
    for entry in range(struct.unpack("<H", data[start:start + 2])[0]):
        at = start + 2 + 12 * entry
        if struct.unpack("<H", data[at:at + 2])[0] == 273:
            data[at + 2:at + 4] = struct.pack("<H", 5)
    return bytes(data)


def test_decoder_failures_of_any_kind_name_the_file(tmp_path, monkeypatch):
    (tmp_path / "bad.tif").write_bytes(tiff_with_bad_strip_offsets())
    with pytest.raises(InputError, match="bad.tif is not a readable image.*TypeError"):
        read_file(tmp_path / "bad.tif")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok.png")

    def unsupported(self):  # as Pillow's DDS plugin does for pixel formats it lacks
        raise NotImplementedError("Unimplemented pixel format")
    monkeypatch.setattr(Image.Image, "load", unsupported)
    with pytest.raises(InputError, match="ok.png is not a readable image.*NotImplementedError"):
        read_file(tmp_path / "ok.png")


def peak_of_reading(path: Path, preprocess: str, budget: str) -> dict:
    """read_file in a fresh process under ONNX_CAM_MAX_MEMORY=`budget`: the error message
    and the peak resident memory the call added."""
    return peak_in_subprocess("from onnx_cam import OnnxCamError; "
                              "from onnx_cam.inputs import Preprocess, read_file",
                              f"read_file({str(path)!r}, {preprocess})", "OnnxCamError", budget)


def blank_png(width: int, height: int) -> bytes:
    """A black 8-bit grayscale PNG, compressed row by row (a few hundred KiB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    packer, row = zlib.compressobj(9), b"\x00" * (width + 1)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    """9000 x 9000 pixels (under Pillow's own bomb limit) in a 0.1 MB file: as RGB float32
    0.9 GiB. Under a 100 MB budget it is refused from its header; before, decoding it
    and converting it took over 1 GiB."""
    (tmp_path / "bomb.png").write_bytes(blank_png(9000, 9000))
    assert (tmp_path / "bomb.png").stat().st_size < 2**20
    result = peak_of_reading(tmp_path / "bomb.png", "Preprocess(mode='RGB')", "100MB")
    assert result["message"] == (
        f"MemoryBudgetError: {tmp_path / 'bomb.png'} is 9000 x 9000 pixels: as 3-channel "
        "float32 it takes 0.91 GiB, more than the memory budget of 0.09 GiB (max_memory= or "
        "ONNX_CAM_MAX_MEMORY). Downscale the image, or raise the budget.")
    assert result["added"] < 60 * 2**20, result


def test_a_large_array_is_refused_from_its_header(tmp_path):
    """An .npz member of 40,000 x 1,000 zeros (160 MB, 0.2 MB compressed) under a 100 MB
    budget: refused before numpy allocates it."""
    with zipfile.ZipFile(tmp_path / "big.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("a.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {
                "descr": "<f4", "fortran_order": False, "shape": (40_000, 1000)})
            zeros = bytes(4_000_000)
            for _ in range(40):
                member.write(zeros)
    result = peak_of_reading(tmp_path / "big.npz", "", "100MB")
    assert result["message"].startswith(
        f"MemoryBudgetError: {tmp_path / 'big.npz'} holds 40000 items of shape (1000,): reading "
        "them as float32 takes 0.15 GiB, more than the memory budget of 0.09 GiB")
    assert result["added"] < 60 * 2**20, result
    np.save(tmp_path / "small.npy", np.ones((3, 1000), np.float64))  # 24 + 12 kB: fits
    np.testing.assert_array_equal(read_file(tmp_path / "small.npy", max_memory=36_000), 1)
    with pytest.raises(MemoryBudgetError, match="small.npy holds 3 items"):
        read_file(tmp_path / "small.npy", max_memory=35_999)


@pytest.mark.parametrize("shape", [(0,), (0, 2, 32), (3, 0, 5)])
def test_arrays_without_values_are_refused(tmp_path, shape):
    np.save(tmp_path / "empty.npy", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match="empty.npy holds no values.*at least one item"):
        read_file(tmp_path / "empty.npy")


def test_image_stack_is_refused(tmp_path, rng):
    frames = [Image.fromarray(rng.integers(0, 255, (4, 4), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="stack.tif holds 3 frames"):
        read_file(tmp_path / "stack.tif")


# ---- CSV signals ----------------------------------------------------------------------------
@pytest.mark.parametrize("header", [True, False])
def test_csv_columns_are_channels(tmp_path, rng, header):
    signal = rng.standard_normal((50, 3))  # T rows, C columns
    lines = (["lead_i,lead_ii,v1"] if header else []) + [
        ",".join(repr(float(v)) for v in row) for row in signal]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n\n")
    x = read_file(tmp_path / "s.csv")
    assert x.shape == (1, 3, 50) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], signal.T, rtol=1e-6)
    last = read_file(tmp_path / "s.csv", Preprocess(channels_first=False))
    np.testing.assert_allclose(last[0], signal, rtol=1e-6)


def test_tsv_with_one_row_per_channel(tmp_path, rng):
    signal = rng.standard_normal((2, 30))  # C rows, T columns
    (tmp_path / "s.tsv").write_text("\n".join("\t".join(map(str, row)) for row in signal))
    x = read_file(tmp_path / "s.tsv", Preprocess(transpose=True))
    np.testing.assert_allclose(x[0], signal, rtol=1e-6)


def test_csv_errors_name_file_and_line(tmp_path):
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4\n5\n")
    with pytest.raises(InputError, match=r"ragged.csv, line 4: 1 cells .* have 2"):
        read_file(tmp_path / "ragged.csv")
    (tmp_path / "text.csv").write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(InputError, match=r"text.csv, line 3, column 2: 'x' is not a number"):
        read_file(tmp_path / "text.csv")
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="empty.csv holds no numbers"):
        read_file(tmp_path / "empty.csv")


# ---- arrays ---------------------------------------------------------------------------------
def test_npy_and_npz_in_name_order(tmp_path, rng):
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((1, 3, 4))
    np.save(tmp_path / "a.npy", a)  # float64 in, float32 out
    np.savez(tmp_path / "b.npz", second=a, first=b)
    x = read_inputs([tmp_path / "a.npy", tmp_path / "b.npz"])
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, np.concatenate([a, b, a]), rtol=1e-6)


def test_pickled_npy_is_never_unpickled(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="obj.npy holds Python objects.*never unpickles"):
        read_file(tmp_path / "obj.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array at all")
    with pytest.raises(InputError, match="junk.npy is neither a .npy nor an .npz"):
        read_file(tmp_path / "junk.npy")


def test_non_finite_items_are_named(tmp_path):
    x = np.zeros((4, 2, 5), np.float32)
    x[2, 1, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(InputError, match=r"nan.npy: items \[2\] contain NaN"):
        read_file(tmp_path / "nan.npy")


def test_unknown_missing_and_mismatched_files(tmp_path):
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(InputError, match="x.txt: unknown file type '.txt'"):
        read_file(tmp_path / "x.txt")
    with pytest.raises(InputError, match="gone.npy does not exist"):
        read_file(tmp_path / "gone.npy")
    np.save(tmp_path / "a.npy", np.zeros((1, 2, 5)))
    np.save(tmp_path / "b.npy", np.zeros((1, 2, 6)))
    with pytest.raises(InputError, match=r"different shapes.*a.npy.*b.npy"):
        read_inputs([tmp_path / "a.npy", tmp_path / "b.npy"])


def test_folder_means_its_input_files_by_name(tmp_path):
    for name in ("b.npy", "a.npy"):
        np.save(tmp_path / name, np.full((1, 2), ord(name[0]), np.float32))
    (tmp_path / "notes.txt").write_text("skipped")
    assert [p.name for p in expand_paths([tmp_path])] == ["a.npy", "b.npy"]
    np.testing.assert_array_equal(read_inputs([tmp_path])[:, 0], [ord("a"), ord("b")])


# ---- preprocessing options and the model's expectations -------------------------------------
def test_preprocess_validates_its_fields():
    with pytest.raises(InputError, match="mean has 2 values"):
        Preprocess(mean=(0.1, 0.2))
    with pytest.raises(InputError, match="std.*contains 0"):
        Preprocess(std=(0.0,))
    with pytest.raises(InputError, match="mode 'CMYK'"):
        Preprocess(mode="CMYK")
    assert Preprocess(mean=0.5, size=[4, 5]) == Preprocess(mean=(0.5,), size=(4, 5))


@pytest.fixture(scope="module")
def rgb_explainer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).eval()
    return onnx_cam.Explainer(export_torch(net, torch.randn(1, 3, 16, 12)))


def test_defaults_follow_the_model(rgb_explainer, tmp_path, rgb):
    pre = preprocess_for(rgb_explainer)
    assert pre == Preprocess(size=(16, 12), mode="RGB", channels_first=True)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    x = read_file(tmp_path / "a.png", pre, item_shape=rgb_explainer.model.input_shape[1:])
    assert x.shape == (1, 3, 16, 12)


def test_files_that_do_not_fit_the_model_are_named_with_a_fix(rgb_explainer, tmp_path, rgb):
    want = rgb_explainer.model.input_shape[1:]
    Image.fromarray(rgb).save(tmp_path / "small.png")
    with pytest.raises(InputError, match=r"small.png: .* \(3, 12, 10\).*--size 16 12"):
        read_file(tmp_path / "small.png", item_shape=want)
    with pytest.raises(InputError, match=r"small.png: .*takes 3 channel.*--grayscale"):
        read_file(tmp_path / "small.png", Preprocess(size=(16, 12), mode="L"), item_shape=want)
    with pytest.raises(InputError, match=r"small.png: .*other channel layout: use "
                                         r"--channels-last"):
        read_file(tmp_path / "small.png", Preprocess(size=(16, 12)), item_shape=(16, 12, 3))
    (tmp_path / "rows.csv").write_text("\n".join(",".join(["1"] * 40) for _ in range(2)))
    with pytest.raises(InputError, match=r"rows.csv: .*--csv-transpose"):
        read_file(tmp_path / "rows.csv", item_shape=(2, 40))
    (tmp_path / "cols.csv").write_text("\n".join("1,2" for _ in range(40)))
    with pytest.raises(InputError, match=r"cols.csv: .*leave out --csv-transpose"):
        read_file(tmp_path / "cols.csv", Preprocess(transpose=True), item_shape=(2, 40))
    np.save(tmp_path / "x.npy", np.zeros((3, 16, 12, 3), np.float32))
    with pytest.raises(InputError, match=r"x.npy: its items are shaped \(16, 12, 3\)"):
        read_file(tmp_path / "x.npy", item_shape=want)
