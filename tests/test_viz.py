"""onnx_cam.viz: every figure type on 1D, 2D and 3D explanations of small torch CNNs.

Colours are checked against matplotlib's own colormap lookup of the CAM (independent of the
score-range round trip the figures make), overlays against the alpha-blend formula written
here in numpy, colour bars against the explanation's score ranges, files by size and pixel
variance, GIFs by their frame count.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from PIL import Image
from torch import nn

import onnx_cam
from onnx_cam import InputError, viz

CLASSES = ["alpha", "beta", "gamma"]
LUT_STEP = 0.035  # largest change between adjacent entries of jet's 256-colour table


def tiny_cnn(dims: int, channels: int) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
    return nn.Sequential(conv(channels, 4, 3, padding=1), nn.ReLU(),
                         conv(4, 6, 3, stride=2, padding=1), nn.ReLU(), pool(1), nn.Flatten(),
                         nn.Linear(6, len(CLASSES)), nn.Softmax(dim=1)).eval()


def explained(dims: int, x: np.ndarray, **kwargs):
    torch.manual_seed(dims)
    exp = onnx_cam.Explainer(tiny_cnn(dims, x.shape[1]), example_input=x[:2],
                             class_names=CLASSES)
    return exp.explain(x, **kwargs)


@pytest.fixture(scope="module")
def case1d():
    x = np.random.default_rng(1).normal(size=(2, 3, 60)).astype(np.float32)
    return x, explained(1, x, targets=[0, 2])


@pytest.fixture(scope="module")
def case2d():
    x = np.random.default_rng(2).normal(size=(2, 1, 12, 16)).astype(np.float32)
    return x, explained(2, x)


@pytest.fixture(scope="module")
def case3d():
    x = np.random.default_rng(3).normal(size=(1, 1, 5, 8, 8)).astype(np.float32)
    return x, explained(3, x)


@pytest.fixture(autouse=True)
def no_figure_left_open():
    yield
    assert plt.get_fignums() == []


# ---- helpers ------------------------------------------------------------------------------
def colorbars(fig):
    """The colour-bar axes of a figure, in creation order."""
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def panels(fig, rows: int, cols: int) -> np.ndarray:
    """The figure's plot axes (not its colour bars) as the rows x cols grid they fill."""
    return np.array([ax for ax in fig.axes if ax not in colorbars(fig)]).reshape(rows, cols)


def bar_limits(cax) -> tuple[float, float]:
    return cax.get_ylim()


def expected_colours(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    return matplotlib.colormaps[cmap](cam.astype(np.float64))


def assert_colours(got: np.ndarray, cam: np.ndarray, cmap: str = "jet") -> None:
    """Colours equal the colormap's colour of the CAM, up to a neighbouring LUT entry
    (the figure maps the CAM to score units and back, which may cross a bin edge)."""
    diff = np.abs(np.asarray(got)[:, :3] - expected_colours(cam, cmap)[:, :3])
    assert diff.max() < LUT_STEP
    assert np.mean(diff.max(axis=1) > 0) < 0.05


def assert_picture(path, *, min_kb: float = 3, max_kb: float = 300) -> np.ndarray:
    size = path.stat().st_size / 1e3
    assert min_kb < size < max_kb, f"{path.name}: {size:.0f} kB"
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 15, f"{path.name} looks blank"
    return pixels


# ---- signals ------------------------------------------------------------------------------
def test_signal_figure_lines_follow_the_cam(case1d, tmp_path):
    x, res = case1d
    cam, ranges = res.cam(), res.score_range()
    titles = [viz.row_title(res, r, true_label=1) for r in range(2)]
    path = tmp_path / "signals.png"
    fig = viz.signal_figure(x, cam, ranges, fs=20.0, channel_names=["I", "II", "V1"],
                            titles=titles, path=path)
    assert_picture(path)
    fig.canvas.draw()
    grid = panels(fig, 3, 2)  # channels x items
    for j in range(2):
        assert bar_limits(colorbars(fig)[j]) == (float(ranges[j, 0]), float(ranges[j, 1]))
        assert CLASSES[res.targets[j]] in grid[0, j].get_title()
        assert "true beta" in grid[0, j].get_title()
        for c in range(3):
            (lines,) = [a for a in grid[c, j].collections if isinstance(a, LineCollection)]
            lo, hi = ranges[j]
            np.testing.assert_allclose(lines.get_array(), cam[j] * (hi - lo) + lo, rtol=1e-6)
            assert_colours(lines.get_colors(), cam[j])
            middle = np.array([seg[1] for seg in lines.get_segments()])
            np.testing.assert_allclose(middle, np.stack([np.arange(60) / 20.0, x[j, c]], 1),
                                       rtol=1e-6)
    assert grid[2, 0].get_xlabel() == "time (s)"
    assert [grid[c, 0].get_ylabel() for c in range(3)] == ["I", "II", "V1"]


def test_signal_image_cam_colours_each_channel_by_its_row():
    rng = np.random.default_rng(0)
    signals, cam = rng.normal(size=(2, 30)), rng.random((2, 30))
    fig = viz.signal_figure(signals, cam, [1.0, 3.0], channels=[1], cmap="viridis")
    fig.canvas.draw()
    (lines,) = fig.axes[0].collections
    np.testing.assert_allclose(lines.get_array(), cam[1] * 2 + 1, rtol=1e-6)
    assert_colours(lines.get_colors(), cam[1], "viridis")
    assert fig.axes[0].get_ylabel() == "ch 1"
    assert bar_limits(colorbars(fig)[0]) == (1.0, 3.0)


def test_heatmap_is_the_map_in_score_units():
    cam = np.random.default_rng(0).random((2, 4, 50)).astype(np.float32)
    ranges = np.array([[0.5, 2.0], [0.0, 0.1]], np.float32)
    fig = viz.heatmap_figure(cam, ranges, fs=10.0, channel_names=list("abcd"))
    for j, ax in enumerate(fig.axes[:2]):
        lo, hi = ranges[j].astype(np.float64)
        np.testing.assert_allclose(ax.images[0].get_array(), cam[j] * (hi - lo) + lo, rtol=1e-6)
        assert ax.images[0].get_extent() == [-0.05, 4.95, 3.5, -0.5]
        assert [t.get_text() for t in ax.get_yticklabels()] == list("abcd")
        assert bar_limits(colorbars(fig)[j]) == (float(ranges[j, 0]), float(ranges[j, 1]))


# ---- images -------------------------------------------------------------------------------
def test_overlay_figure_blends_the_cam_over_the_input(case2d, tmp_path):
    x, res = case2d
    cam, ranges = res.cam(), res.score_range()
    path = tmp_path / "overlay.png"
    titles = [viz.row_title(res, r) for r in range(2)]
    fig = viz.overlay_figure(x, cam, ranges, alpha=0.4, cmap="magma", titles=titles, path=path)
    assert_picture(path)
    axes = panels(fig, 2, 2)
    for j in range(2):
        grey = (x[j, 0] - x[j, 0].min()) / (x[j, 0].max() - x[j, 0].min())
        colour = matplotlib.colormaps["magma"](cam[j], bytes=True)[..., :3].astype(np.float64)
        blend = np.floor(0.6 * grey[..., None] * 255 + 0.4 * colour + 0.5)
        np.testing.assert_allclose(axes[0, j].images[0].get_array(), grey, atol=1e-6)
        np.testing.assert_allclose(axes[1, j].images[0].get_array(), blend, atol=1.0)
        assert bar_limits(colorbars(fig)[j]) == (float(ranges[j, 0]), float(ranges[j, 1]))
        assert axes[0, j].get_title().startswith(CLASSES[res.predicted[j]])


def test_contrastive_titles_say_target_vs_foil(case2d):
    x, _ = case2d
    res = explained(2, x[:1], targets="beta", foils=[["alpha", "gamma"]])
    assert len(res) == 2
    titles = [viz.row_title(res, r, true_label="beta") for r in range(2)]
    assert titles[0].startswith("beta vs alpha (p=")
    assert titles[1].startswith("beta vs gamma (p=")
    assert all("true beta" in t for t in titles)
    fig = viz.overlay_figure(x[res.items], res.cam(), res.score_range(), titles=titles)
    assert "beta vs gamma" in panels(fig, 2, 2)[0, 1].get_title()


def test_spectrogram_overlay_has_time_and_channel_axes():
    rng = np.random.default_rng(0)
    fig = viz.overlay_figure(rng.random((1, 3, 40)), rng.random((3, 40)), [0, 1], fs=8.0,
                             channel_names=["lo", "mid", "hi"], show_input=False)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time (s)"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["lo", "mid", "hi"]
    assert ax.images[0].get_array().shape == (3, 40, 3)


# ---- volumes ------------------------------------------------------------------------------
def test_montage_shows_every_slice_with_one_colour_bar(case3d, tmp_path):
    x, res = case3d
    path = tmp_path / "montage.png"
    fig = viz.montage_figure(x[0], res.cam()[0], res.score_range()[0], ncols=3,
                             title=viz.row_title(res, 0), path=path)
    assert_picture(path)
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == [f"z = {k}" for k in range(5)]
    (cax,) = colorbars(fig)
    assert bar_limits(cax) == tuple(float(v) for v in res.score_range()[0])
    assert CLASSES[res.predicted[0]] in fig.get_suptitle()


def test_volume_gif_has_one_frame_per_slice(case3d, tmp_path):
    x, res = case3d
    paths = viz.volume_gif(x[0], res.cam()[0], res.score_range()[0], tmp_path / "v.gif",
                           fps=10, frames_dir=tmp_path / "frames", title="video")
    assert paths[0] == tmp_path / "v.gif"
    assert 3e3 < paths[0].stat().st_size < 1e6
    with Image.open(paths[0]) as gif:
        assert gif.n_frames == 5
        assert gif.info["duration"] == 100
        frames = [np.asarray(gif.convert("RGB"), np.float64) for _ in gif_frames(gif)]
    assert all(f.std() > 15 for f in frames)
    assert len(paths) == 6 and all(p.suffix == ".png" for p in paths[1:])
    for p in paths[1:]:
        assert_picture(p, min_kb=1)


def gif_frames(gif):
    for k in range(gif.n_frames):
        gif.seek(k)
        yield k


# ---- tokens -------------------------------------------------------------------------------
def test_token_figure_colours_tokens_and_leaves_padding_out(tmp_path):
    words = ["the", "film", "was", "wonderful", "<pad>", "<pad>"]
    cam = np.array([0.1, 0.3, 0.0, 1.0, 0.7, 0.9], np.float32)
    mask = np.array([1, 1, 1, 1, 0, 0], bool)
    path = tmp_path / "tokens.png"
    fig = viz.token_figure(words, cam, [0.0, 4.0], mask=mask, title="positive vs negative",
                           path=path)
    assert_picture(path, min_kb=2)
    text_ax, bars_ax = fig.axes[:2]
    assert [t.get_text() for t in text_ax.texts] == words[:4]
    boxes = np.array([p.get_facecolor() for p in text_ax.patches])
    assert_colours(boxes, cam[:4])
    heights = [b.get_height() for b in bars_ax.patches]
    np.testing.assert_allclose(heights, cam[:4] * 4.0, rtol=1e-6)
    assert bar_limits(colorbars(fig)[0]) == (0.0, 4.0)
    assert "vs" in fig.get_suptitle()


def test_tokens_given_for_real_positions_only():
    fig = viz.token_figure(list("ACGT"), np.linspace(0, 1, 6), [0, 1], bars=False,
                           mask=[0, 1, 1, 1, 1, 0])
    assert [t.get_text() for t in fig.axes[0].texts] == list("ACGT")
    assert_colours(np.array([p.get_facecolor() for p in fig.axes[0].patches]),
                   np.linspace(0, 1, 6)[1:5])


# ---- save_figures ---------------------------------------------------------------------------
def test_save_figures_picks_the_figure_from_the_rank(case1d, case2d, case3d, tmp_path):
    written = []
    for (x, res), name in zip((case1d, case2d, case3d), ("1d", "2d", "3d")):
        written += viz.save_figures(res, x, tmp_path / name, true_labels=[0] * len(x),
                                    fs=100.0 if name == "1d" else None)
    assert [p.suffix for p in written] == [".png"] * 4 + [".gif"]
    assert written[0].name == f"item000_alpha_gradcam_{case1d[1].layers[0]}.png"
    for p in written[:4]:
        assert_picture(p)
    with Image.open(written[4]) as gif:
        assert gif.n_frames == 5


def test_save_figures_contrastive_and_other_kinds(case2d, case3d, tmp_path):
    x, _ = case2d
    res = explained(2, x, targets="beta", foils="gamma", methods=["gradcam", "hirescam"])
    written = viz.save_figures(res, x, tmp_path, method="hirescam", kind="heatmap")
    assert [p.name for p in written] == [f"item00{k}_beta_vs_gamma_hirescam_{res.layers[0]}.png"
                                         for k in range(2)]
    signals = viz.save_figures(res, x, tmp_path, method="gradcam", kind="signal", fs=4.0,
                               channels=[0, 5], prefix="lines_")
    assert [p.name[:13] for p in signals] == ["lines_item000", "lines_item001"]
    assert_picture(signals[0])
    x3, res3 = case3d
    (montage, gif, *frames) = (viz.save_figures(res3, x3, tmp_path, kind="montage")
                               + viz.save_figures(res3, x3, tmp_path, frames=True))
    assert montage.suffix == ".png" and gif.suffix == ".gif" and len(frames) == 5


def test_save_figures_takes_plain_arrays_and_channels_last(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 40, 3))  # (N, T, C), as a Keras model takes it
    cams = rng.random((2, 40))
    written = viz.save_figures(cams, x, tmp_path, score_ranges=[[0, 2], [1, 5]],
                               titles=["one", "two"])
    assert [p.name for p in written] == ["item000.png", "item001.png"]
    for p in written:
        assert_picture(p)
    ids = rng.integers(1, 20, (2, 12))
    ids[1, 8:] = 0
    (_, second) = viz.save_figures(rng.random((2, 12)), ids, tmp_path / "tok", pad_id=0)
    assert_picture(second, min_kb=2)


# ---- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda: viz.signal_figure(np.zeros((2, 9)), np.full(9, 2.0), [0, 1]), "normalised"),
    (lambda: viz.signal_figure(np.zeros((2, 9)), np.zeros(8), [0, 1]), "do not fit"),
    (lambda: viz.signal_figure(np.zeros((2, 9)), np.zeros(9), [[0, 1]] * 2), "score_ranges"),
    (lambda: viz.signal_figure(np.zeros((2, 9)), np.zeros(9), [1, 0]), "min <= max"),
    (lambda: viz.signal_figure(np.zeros((2, 9)), np.zeros(9), [0, 1], fs=0), "positive"),
    (lambda: viz.signal_figure(np.zeros((2, 9)), np.zeros(9), [0, 1], channel_names=["a"]),
     "name every channel"),
    (lambda: viz.signal_figure(np.zeros((2, 9)), np.zeros(9), [0, 1], channels=[2]),
     "channel indices"),
    (lambda: viz.overlay_figure(np.zeros((1, 4, 4)), np.zeros((4, 4)), [0, 1], cmap="nope"),
     "colormap name"),
    (lambda: viz.overlay_figure(np.zeros((2, 4, 4)), np.zeros((4, 4)), [0, 1]), "channel=k"),
    (lambda: viz.overlay_figure(np.zeros((1, 4, 4)), np.zeros((4, 4)), [0, 1], alpha=2),
     "opacity"),
    (lambda: viz.volume_gif(np.zeros((1, 2, 3, 3)), np.zeros((2, 3, 3)), [0, 1], "v.png"),
     ".gif"),
    (lambda: viz.montage_figure(np.zeros((1, 2, 3, 3)), np.zeros((2, 3, 3)), [0, 1],
                                slices=[5]), "slices"),
    (lambda: viz.token_figure(["a"] * 3, np.zeros(2), [0, 1]), "at most one token"),
    (lambda: viz.token_figure(["a"] * 3, np.zeros(5), [0, 1], mask=[1, 1, 0, 0, 0]),
     "real position"),
    (lambda: viz.save_figures(np.zeros((2, 5)), np.zeros((2, 3, 6)), "out"), "does not fit"),
    (lambda: viz.save_figures(np.zeros((1, 5)), np.zeros((1, 3, 5)), "out", kind="image"),
     "choose one of"),
])
def test_bad_arguments_raise_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()
