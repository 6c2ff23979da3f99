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
It also writes the exported models (model_*.onnx), one saved Explanation (explanation_2d.npz)
and held-out items as files for the README's `onnx-cam` examples (see save_samples).
"""

import argparse
import time
from collections import OrderedDict
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from matplotlib.collections import LineCollection
from PIL import Image
from torch import nn

import onnx_cam

matplotlib.use("Agg")  # files only, no window

METHODS = ["gradcam", "hirescam"]
N_TEST = 60  # held-out items per modality (the first ones of each set)
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


# Object masks from |offsets to the centre| (one array per axis); g grows them by g pixels.
SHAPES_2D = [
    lambda dy, dx, g: np.maximum(dy, dx) <= 6 + g,  # filled square, 13 px
    lambda dy, dx, g: dy**2 + dx**2 <= (7.5 + g) ** 2,  # disc, 15 px
    lambda dy, dx, g: (np.minimum(dy, dx) <= 2 + g) & (np.maximum(dy, dx) <= 8 + g),  # cross
]
SHAPES_3D = [
    lambda dz, dy, dx, g: dz**2 + dy**2 + dx**2 <= (3.5 + g) ** 2,  # ball, 7 voxels across
    lambda dz, dy, dx, g: (np.maximum(dz, dy) <= 1 + g) & (dx <= 7 + g),  # bar, 3 x 3 x 15
]


def make_scenes(n, rng, size, shapes, *, grow):
    """Noisy 1-channel images/volumes, one bright object (class = shape) each; region: the
    object grown by `grow` pixels, the tolerance of the pointing game."""
    x = rng.normal(0, 0.3, (n, 1, *size)).astype(np.float32)
    y = rng.integers(0, len(shapes), n)
    region = np.zeros((n, *size), bool)
    grid = np.ogrid[tuple(slice(s) for s in size)]
    for i in range(n):
        centre = [rng.integers(min(9, s // 4), s - min(9, s // 4)) for s in size]
        d = [np.abs(g - c) for g, c in zip(grid, centre)]
        if rng.random() < 0.5:  # random in-plane orientation (turns the 3D bar)
            d[-2], d[-1] = d[-1], d[-2]
        x[i, 0][shapes[y[i]](*d, 0)] += 1.0
        region[i] = shapes[y[i]](*d, grow)
    return x, y, region


# ---- tiny CNNs ----------------------------------------------------------------------------
def block(dim, cin, cout, k=3):
    """Conv -> BatchNorm -> ReLU in 1, 2 or 3 spatial dimensions."""
    conv, bn = getattr(nn, f"Conv{dim}d"), getattr(nn, f"BatchNorm{dim}d")
    return nn.Sequential(conv(cin, cout, k, padding=k // 2), bn(cout), nn.ReLU())


class Residual(nn.Module):
    """relu(x + body(x)): exported as an ONNX Add, to show skip connections are handled."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(block(2, c, c), nn.Conv2d(c, c, 3, padding=1),
                                  nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def net_1d():
    return nn.Sequential(OrderedDict(
        block1=block(1, 2, 16, 7), pool1=nn.MaxPool1d(2),
        block2=block(1, 16, 32, 5), pool2=nn.MaxPool1d(2),
        block3=block(1, 32, 32, 5),
        gap=nn.AdaptiveAvgPool1d(1), flatten=nn.Flatten(), fc=nn.Linear(32, 3),
        softmax=nn.Softmax(dim=1)))


def net_2d():
    return nn.Sequential(OrderedDict(
        block1=block(2, 1, 8), pool1=nn.MaxPool2d(2),
        block2=block(2, 8, 16), pool2=nn.MaxPool2d(2),
        res=Residual(16),
        gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 3),
        softmax=nn.Softmax(dim=1)))


def net_3d():  # no Softmax: onnx-cam then explains the logits directly
    return nn.Sequential(OrderedDict(
        block1=block(3, 1, 4), pool1=nn.MaxPool3d(2),
        block2=block(3, 4, 8), block3=block(3, 8, 8),
        gap=nn.AdaptiveAvgPool3d(1), flatten=nn.Flatten(), fc=nn.Linear(8, 2)))


def train(net, x, y, epochs, batch=64, lr=1e-2):
    """Adam + one-cycle schedule on the logits (a final Softmax is skipped); train accuracy."""
    logits = net[:-1] if isinstance(net[-1], nn.Softmax) else net
    opt = torch.optim.Adam(net.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, epochs=epochs,
                                                steps_per_epoch=-(-len(x) // batch))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            opt.zero_grad()
            F.cross_entropy(logits(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
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
                ax.axvspan(span[0], span[-1], color="0.85")
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
    fig.suptitle("Each channel coloured by the CAM. Grey: planted event; dotted: CAM maximum")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def to_unit(img):
    """Noisy input (object at +1 over N(0, 0.3)) to a [0, 1] grey image."""
    return np.clip((img + 1.0) / 3.0, 0.0, 1.0)


def plot_2d(x, y, region, res, names, items, path):
    fig, axes = plt.subplots(len(items) // 2, 6, figsize=(14, 2.6 * len(items) // 2),
                             layout="constrained")
    for k, i in enumerate(items):
        row = axes[k // 2, 3 * (k % 2):3 * (k % 2) + 3]
        row[0].imshow(to_unit(x[i, 0]), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(caption(res, names, y, i), fontsize=9)
        for ax, method in zip(row[1:], METHODS):
            cam = res.cam(method)[i]
            ax.imshow(onnx_cam.kernels.overlay(to_unit(x[i, 0]), cam, alpha=0.5, cmap="jet"))
            ax.plot(*np.unravel_index(cam.argmax(), cam.shape)[::-1], "w+", ms=12, mew=2)
            ax.set_title(TITLES[method], fontsize=9)
        for ax in row:
            ax.contour(region[i], levels=[0.5], colors="w", linewidths=0.8, linestyles="--")
            ax.set_axis_off()
    fig.suptitle("Dashed: planted shape + 2 px tolerance; +: CAM maximum")
    fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, 1), "jet"), ax=axes, shrink=0.6,
                 label="CAM")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_3d(x, y, region, res, names, items, path, step=2):
    """Every `step`-th depth slice: the input, then each method's overlay (+: CAM maximum)."""
    depths = list(range(0, x.shape[2], step))
    rows = [(i, what) for i in items for what in ["input", *METHODS]]
    fig, axes = plt.subplots(len(rows), len(depths), figsize=(1.5 * len(depths), 1.6 * len(rows)))
    for r, (i, what) in enumerate(rows):
        vol = to_unit(x[i, 0])
        if what == "input":
            shown, peak = vol, None
            axes[r, 0].set_ylabel(caption(res, names, y, i).replace(" | ", "\n"), fontsize=8)
        else:
            cam = res.cam(what)[i]
            shown = onnx_cam.kernels.overlay(vol, cam, alpha=0.5, cmap="jet")
            peak = np.unravel_index(cam.argmax(), cam.shape)
            axes[r, 0].set_ylabel(TITLES[what], fontsize=8)
        for ax, z in zip(axes[r], depths):
            ax.imshow(shown[z], cmap="gray", vmin=0, vmax=1)
            if region[i, z].any():
                ax.contour(region[i, z], levels=[0.5], colors="w", linewidths=0.6,
                           linestyles="--")
            if peak is not None and z <= peak[0] < z + step:
                ax.plot(peak[2], peak[1], "w+", ms=10, mew=2)
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"z={z}", fontsize=7)
    fig.suptitle("Depth slices. Dashed: planted object + 1 voxel tolerance; +: CAM maximum")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_samples(name, net, x, out):
    """Held-out items as the files `onnx-cam explain` reads, and the 1D net's weights for
    `onnx-cam convert torch scripts.demo:net_1d`."""
    np.save(out / f"items_{name}.npy", x[:8])
    if name == "1d":  # one signal: a row per sample, a column per channel
        np.savetxt(out / "signal_1d.csv", x[0].T, fmt="%.5f", delimiter=",", header="ch0,ch1",
                   comments="")
        torch.save(net.state_dict(), out / "net_1d.pt")
    if name == "2d":  # pixel = 255 * (x + 1) / 3: explained with --mean 1/3 --std 1/3
        Image.fromarray(np.round(255 * to_unit(x[0, 0])).astype(np.uint8)).save(
            out / "image_2d.png")


def audit_1d(classes, out, items=2000):
    """An audit job over a fresh 1D dataset (onnx_cam.audit), and its HTML report."""
    from onnx_cam.audit import run
    from onnx_cam.audit.report import write_report
    x, y, _ = make_1d(items, np.random.default_rng(7))
    np.save(out / "audit_1d.npy", x)
    np.save(out / "audit_1d_labels.npy", y)
    t0 = time.perf_counter()
    store = run(out / "model_1d.onnx", out / "audit_1d.npy", out / "audit_1d.zarr",
                labels=out / "audit_1d_labels.npy", overwrite=True, progress=False)
    confusion = store["stats/confusion"][:]
    write_report(store, out / "audit_1d.html")
    print(f"[audit] {items} items in {time.perf_counter() - t0:.1f}s -> {store.url}: accuracy "
          f"{np.trace(confusion) / confusion.sum():.1%}, report audit_1d.html")


# ---- main: train, explain, draw, score --------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.set_num_threads(1)  # tiny nets gain little from threads; one stays fast on busy CPUs
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tasks = {
        "1d": dict(data=make_1d(960, rng), net=net_1d(), classes=["sine", "square", "none"],
                   epochs=4, batch=32, plot=plot_1d, per_class=1),
        "2d": dict(data=make_scenes(960, rng, (64, 64), SHAPES_2D, grow=2.0), net=net_2d(),
                   classes=["square", "disc", "cross"], epochs=6, batch=32, plot=plot_2d,
                   per_class=2),
        "3d": dict(data=make_scenes(460, rng, (16, 32, 32), SHAPES_3D, grow=1.0),
                   net=net_3d(), classes=["ball", "bar"], epochs=3, batch=16, plot=plot_3d,
                   per_class=1),
    }
    # 1. Train each net on all but the first N_TEST items.
    for name, t in tasks.items():
        x, y, _ = t["data"]
        t0 = time.perf_counter()
        acc = train(t["net"], x[N_TEST:], y[N_TEST:], t["epochs"], batch=t["batch"])
        print(f"[{name}] trained in {time.perf_counter() - t0:.1f}s: train accuracy {acc:.1%}")

    # 2. Explain the held-out items with onnx-cam, draw a few, play the pointing game.
    summary = {}
    for name, t in tasks.items():
        x, y, region = (a[:N_TEST] for a in t["data"])
        exp = onnx_cam.Explainer(t["net"], example_input=x[:2], class_names=t["classes"])
        onnx.save(exp.model.proto, out / f"model_{name}.onnx")
        save_samples(name, t["net"], x, out)
        print(f"[{name}] {exp}\n[{name}] candidate layers, deepest first: {exp.layers}")
        res = exp.explain(x, targets=None, layers="auto", methods=METHODS)
        print(f"[{name}] {res}: held-out accuracy {(res.predicted == y).mean():.1%}, "
              f"raw map {res.raw('gradcam').shape[1:]} -> cam {res.cam('gradcam').shape[1:]}, "
              f"item 0 score range {res.score_range('gradcam')[0].round(3)}")
        if name == "2d":
            res.save(out / "explanation_2d.npz")  # onnx_cam.Explanation.load() reads it back
            # Right before GAP + Linear the score's gradient is uniform in space, so Grad-CAM
            # and HiResCAM coincide; on a layer deeper inside the net they differ.
            for r in (res, exp.explain(x, layers="pool2", methods=METHODS)):
                hits = " / ".join(f"{pointing_game(r.cam(m), region)[0]:.0%}" for m in METHODS)
                print(f"[2d] layer {r.layers[0]}: mean |Grad-CAM - HiResCAM| = "
                      f"{np.abs(r.cam('gradcam') - r.cam('hirescam')).mean():.3f}, "
                      f"pointing game {hits}")
        items = [i for c in range(len(t["classes"]))
                 for i in np.flatnonzero(y == c)[:t["per_class"]]]
        t["plot"](x, y, region, res, t["classes"], items, out / f"cam_{name}.png")
        summary[name] = {m: pointing_game(res.cam(m), region) for m in METHODS}

    print("\nPointing game: share of held-out items whose CAM maximum is on the planted object")
    for name, scores in summary.items():
        cells = "  ".join(f"{TITLES[m]} {hit:.0%}" for m, (hit, _) in scores.items())
        print(f"  {name}: {cells}   (n={next(iter(scores.values()))[1]})")
    audit_1d(tasks["1d"]["classes"], out)
    print(f"Wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/ "
          f"in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
