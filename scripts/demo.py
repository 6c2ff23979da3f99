"""onnx-cam demo: class-activation maps for 1D, 2D and 3D CNNs, checked against ground truth.

    python scripts/demo.py --out demo_out      # about a minute on 2 CPU cores, no downloads

For each modality the script
  1. makes a synthetic dataset where each class is one object planted at a random position,
     so we know where a faithful CAM has to point;
  2. trains a tiny torch CNN for a few seconds (fixed seeds);
  3. explains held-out items with onnx-cam (Grad-CAM and HiResCAM on the deepest layer):
         exp = onnx_cam.Explainer(net, example_input=x[:2])   # exports to ONNX on the way
         res = exp.explain(x_test, methods=["gradcam", "hirescam"])
         res.cam("gradcam")  # (N, *input_spatial) in [0, 1]
  4. draws the maps (cam_1d.png, cam_2d.png, cam_3d.png) and plays the "pointing game":
     the fraction of items whose CAM maximum lies on the planted object.
It also writes the exported models (model_*.onnx) and one saved Explanation (explanation_2d.npz).
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from torch import nn  # noqa: E402

import onnx_cam  # noqa: E402
from onnx_cam.kernels import overlay  # noqa: E402

METHODS = ["gradcam", "hirescam"]
TITLES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM"}


# ---- synthetic data: (x, y, region), region = where the planted object is ---------------
def make_1d(n, rng):
    """2 x 512 noisy signals. Class 0: a sine burst, 1: a square pulse, 2: nothing."""
    x = rng.normal(0, 0.5, (n, 2, 512)).astype(np.float32)
    y = rng.integers(0, 3, n)
    region = np.zeros((n, 512), bool)
    t = np.arange(48)
    events = {0: 1.5 * np.sin(2 * np.pi * t / 8), 1: np.full(48, 1.2)}
    for i in np.flatnonzero(y < 2):
        s = rng.integers(0, 512 - 48)
        x[i, :, s:s + 48] += events[y[i]] * np.array([[1.0], [-0.7]])  # both channels
        region[i, s:s + 48] = True
    return x, y, region


def shape_2d(cls, d, grow=0.0):
    """Square, disc or cross around the centre; d = |offsets| along (y, x)."""
    dy, dx = d
    if cls == 0:
        return np.maximum(dy, dx) <= 6 + grow
    if cls == 1:
        return dy**2 + dx**2 <= (7.5 + grow) ** 2
    return (np.minimum(dy, dx) <= 2 + grow) & (np.maximum(dy, dx) <= 8 + grow)


def shape_3d(cls, d, grow=0.0):
    """A ball or a bar (15 voxels long, 3 thick) around the centre; d along (z, y, x)."""
    dz, dy, dx = d
    if cls == 0:
        return dz**2 + dy**2 + dx**2 <= (3.5 + grow) ** 2
    return (np.maximum(dz, dy) <= 1 + grow) & (dx <= 7 + grow)


def make_scenes(n, rng, size, shape_fn, n_classes, grow):
    """1-channel noisy images/volumes with one bright object; region = object grown by `grow`
    pixels, the tolerance of the pointing game."""
    x = rng.normal(0, 0.3, (n, 1, *size)).astype(np.float32)
    y = rng.integers(0, n_classes, n)
    region = np.zeros((n, *size), bool)
    grid = np.ogrid[tuple(slice(s) for s in size)]
    for i in range(n):
        centre = [rng.integers(min(9, s // 4), s - min(9, s // 4)) for s in size]
        d = [np.abs(g - c) for g, c in zip(grid, centre)]
        if rng.random() < 0.5:  # random in-plane orientation (turns the 3D bar)
            d[-2], d[-1] = d[-1], d[-2]
        x[i, 0][shape_fn(y[i], d)] += 1.0
        region[i] = shape_fn(y[i], d, grow)
    return x, y, region


# ---- tiny CNNs ----------------------------------------------------------------------------
def block(conv, bn, cin, cout, k=3):
    return nn.Sequential(conv(cin, cout, k, padding=k // 2), bn(cout), nn.ReLU())


class Residual(nn.Module):
    """relu(x + body(x)): exported as an ONNX Add, to show skip connections are handled."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(block(nn.Conv2d, nn.BatchNorm2d, c, c),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def net_1d():
    c, b = nn.Conv1d, nn.BatchNorm1d
    return nn.Sequential(OrderedDict(
        block1=block(c, b, 2, 16, 7), pool1=nn.MaxPool1d(2),
        block2=block(c, b, 16, 32, 5), pool2=nn.MaxPool1d(2),
        block3=block(c, b, 32, 32, 5),
        gap=nn.AdaptiveAvgPool1d(1), flatten=nn.Flatten(), fc=nn.Linear(32, 3),
        softmax=nn.Softmax(dim=1)))


def net_2d():
    c, b = nn.Conv2d, nn.BatchNorm2d
    return nn.Sequential(OrderedDict(
        block1=block(c, b, 1, 16), pool1=nn.MaxPool2d(2),
        block2=block(c, b, 16, 32), pool2=nn.MaxPool2d(2),
        res=Residual(32),
        gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(32, 3),
        softmax=nn.Softmax(dim=1)))


def net_3d():  # no Softmax: onnx-cam then explains the logits directly
    c, b = nn.Conv3d, nn.BatchNorm3d
    return nn.Sequential(OrderedDict(
        block1=block(c, b, 1, 8), pool1=nn.MaxPool3d(2),
        block2=block(c, b, 8, 16), block3=block(c, b, 16, 32),
        gap=nn.AdaptiveAvgPool3d(1), flatten=nn.Flatten(), fc=nn.Linear(32, 2)))


def train(net, x, y, epochs, lr=3e-3, batch=64):
    """Adam on cross-entropy of the logits (the Softmax, if any, is skipped); train accuracy."""
    logits = net[:-1] if isinstance(net[-1], nn.Softmax) else net
    opt = torch.optim.Adam(net.parameters(), lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            loss = F.cross_entropy(logits(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return (logits(xt).argmax(1) == yt).float().mean().item()


def pointing_game(cam, region):
    """Fraction of items with an object whose CAM maximum falls inside its region."""
    has_object = region.reshape(len(region), -1).any(1)
    peak = cam.reshape(len(cam), -1).argmax(1)
    hit = region.reshape(len(region), -1)[np.arange(len(cam)), peak]
    return hit[has_object].mean(), int(has_object.sum())


def caption(res, names, true, i):
    p = res.predicted[i]
    return f"true {names[true[i]]} | pred {names[p]} ({res.probs[i, p]:.2f})"


# ---- drawings -----------------------------------------------------------------------------
def plot_1d(x, y, region, res, names, items, path):
    fig, axes = plt.subplots(len(items), 2, figsize=(13, 2.6 * len(items)), squeeze=False)
    t = np.arange(x.shape[-1])
    for row, i in enumerate(items):
        for ax, method in zip(axes[row], METHODS):
            cam = res.cam(method)[i]
            if region[i].any():
                span = np.flatnonzero(region[i])
                ax.axvspan(span[0], span[-1], color="0.85", label="planted event")
                ax.legend(loc="upper right", fontsize=8)
            for ch, offset in enumerate((3.0, -3.0)):  # one line per channel, coloured by CAM
                pts = np.stack([t, x[i, ch] + offset], 1)
                lc = LineCollection(np.stack([pts[:-1], pts[1:]], 1), cmap="jet",
                                    norm=plt.Normalize(0, 1), linewidths=1.2)
                lc.set_array((cam[:-1] + cam[1:]) / 2)
                ax.add_collection(lc)
            ax.axvline(cam.argmax(), color="k", ls=":", lw=1)  # CAM maximum
            ax.set(xlim=(0, len(t)), ylim=(-7, 7), yticks=[3, -3], yticklabels=["ch0", "ch1"],
                   title=f"{TITLES[method]}: {caption(res, names, y, i)}")
            fig.colorbar(lc, ax=ax, pad=0.01, label="CAM")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def to_unit(img):
    """Noisy input (object at +1 over N(0, 0.3)) to a [0, 1] grey image."""
    return np.clip((img + 1.0) / 3.0, 0.0, 1.0)


def plot_2d(x, y, region, res, names, items, path):
    fig, axes = plt.subplots(len(items) // 2, 6, figsize=(15, 2.7 * len(items) // 2))
    for k, i in enumerate(items):
        row = axes[k // 2, 3 * (k % 2):3 * (k % 2) + 3]
        row[0].imshow(to_unit(x[i, 0]), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(caption(res, names, y, i), fontsize=9)
        for ax, method in zip(row[1:], METHODS):
            cam = res.cam(method)[i]
            ax.imshow(overlay(to_unit(x[i, 0]), cam, alpha=0.5, cmap="jet"))
            ax.plot(*np.unravel_index(cam.argmax(), cam.shape)[::-1], "w+", ms=12, mew=2)
            ax.set_title(TITLES[method], fontsize=9)
        for ax in row:
            ax.contour(region[i], levels=[0.5], colors="w", linewidths=0.8, linestyles="--")
            ax.set_axis_off()
    fig.suptitle("dashed: planted shape + 2 px tolerance, +: CAM maximum")
    fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, 1), "jet"), ax=axes, shrink=0.6,
                 label="CAM")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_3d(x, y, region, res, names, items, path, step=2):
    depths = range(0, x.shape[2], step)
    rows = [(i, what) for i in items for what in ["input", *METHODS]]
    fig, axes = plt.subplots(len(rows), len(depths), figsize=(1.6 * len(depths), 1.8 * len(rows)))
    for r, (i, what) in enumerate(rows):
        vol = to_unit(x[i, 0])
        shown = vol if what == "input" else overlay(vol, res.cam(what)[i], alpha=0.5, cmap="jet")
        peak_z = np.unravel_index(res.cam(METHODS[0])[i].argmax(), vol.shape)[0]
        for ax, z in zip(axes[r], depths):
            ax.imshow(shown[z], cmap="gray", vmin=0, vmax=1)
            if region[i, z].any():
                ax.contour(region[i, z], levels=[0.5], colors="w", linewidths=0.6,
                           linestyles="--")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"z={z}" + (" (peak)" if abs(z - peak_z) < step and r % 3 == 1
                                     else ""), fontsize=7)
        label = caption(res, names, y, i) if what == "input" else TITLES[what]
        axes[r, 0].set_ylabel(label.replace(" | ", "\n"), fontsize=7)
    fig.suptitle("depth slices; dashed: planted object + 1 voxel tolerance")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---- one modality from data to pictures -------------------------------------------------
def run(name, data, net, names, epochs, plot, n_items, out):
    torch.manual_seed(0)
    (x, y, region), n_test = data, 60
    t0 = time.perf_counter()
    acc = train(net, x[n_test:], y[n_test:], epochs)
    print(f"[{name}] trained in {time.perf_counter() - t0:.1f}s, train accuracy {acc:.1%}")

    exp = onnx_cam.Explainer(net, example_input=x[:2], class_names=names)
    onnx.save(exp.model.proto, out / f"model_{name}.onnx")
    print(f"[{name}] {exp}\n[{name}] candidate layers, deepest first: {exp.layers}")
    x_test, y_test, r_test = x[:n_test], y[:n_test], region[:n_test]
    res = exp.explain(x_test, targets=None, layers="auto", methods=METHODS)
    print(f"[{name}] {res}; test accuracy {(res.predicted == y_test).mean():.1%}; "
          f"raw Grad-CAM {res.raw('gradcam').shape[1:]} -> cam {res.cam('gradcam').shape[1:]}")
    items = [i for c in range(len(names)) for i in np.flatnonzero(y_test == c)[:n_items]]
    plot(x_test, y_test, r_test, res, names, items, out / f"cam_{name}.png")
    scores = {m: pointing_game(res.cam(m), r_test) for m in METHODS}
    return res, scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    summary = {}
    _, summary["1d"] = run("1d", make_1d(1260, rng), net_1d(), ["sine", "square", "none"],
                           8, plot_1d, 1, out)
    res2d, summary["2d"] = run("2d", make_scenes(1260, rng, (64, 64), shape_2d, 3, 2.0),
                               net_2d(), ["square", "disc", "cross"], 6, plot_2d, 2, out)
    res2d.save(out / "explanation_2d.npz")
    _, summary["3d"] = run("3d", make_scenes(660, rng, (16, 32, 32), shape_3d, 2, 1.0),
                           net_3d(), ["ball", "bar"], 6, plot_3d, 1, out)

    print("\nPointing game: share of held-out items whose CAM maximum is on the planted object")
    for name, scores in summary.items():
        cells = "  ".join(f"{TITLES[m]} {hit:.0%}" for m, (hit, _) in scores.items())
        print(f"  {name}: {cells}   (n={next(iter(scores.values()))[1]})")
    print(f"Wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/ "
          f"in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
