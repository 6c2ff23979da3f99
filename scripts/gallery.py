"""Regenerate the README's pictures (docs/gallery/) with onnx_cam.viz, from small models
trained here in seconds on generated data (fixed seeds, no downloads):

    python scripts/gallery.py --out docs/gallery      # about a minute on 2 CPU cores

- ECG-like 3-lead signals (125 Hz, 6 s): normal rhythm, a premature ventricular beat (PVC) or
  a dropped beat; a 1D CNN, and a 2D CNN reading the leads as a signal-image (1, leads, T);
- images of a square, a disc or a cross in noise (scripts/demo.py's data and CNN), also
  explained contrastively ("disc vs square");
- volumes holding a ball or a bar (scripts/demo.py's data and CNN): a montage and a GIF;
- DNA: one-hot sequences of 60 to 100 bases, zero-padded to 100, with or without a
  TATAAT box; the padding is left out of the picture;
- one item of each modality explained by every method (SESS needs a model with free spatial
  axes, which these exports are not, so it is left out).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import onnx_cam
from onnx_cam import viz
from onnx_cam.methods import ISCAM, LIME, RISE, SSCAM, KernelSHAP, Occlusion

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo  # noqa: E402  (the synthetic images / volumes, their CNNs and the training loop)

FS = 125                      # ECG sampling frequency, Hz
LEADS = ["I", "II", "V1"]
ECG_CLASSES = ["normal", "PVC", "dropped beat"]
BASES = "ACGT"
MOTIF = "TATAAT"


# ---- ECG-like signals --------------------------------------------------------------------
# A beat is a sum of Gaussian waves (centre s, width s, amplitude per lead I / II / V1).
NORMAL_BEAT = [(-0.20, 0.025, (0.10, 0.15, 0.08)),     # P
               (-0.03, 0.010, (-0.08, -0.10, 0.00)),   # Q
               (0.00, 0.012, (0.90, 1.20, -0.40)),     # R (rS in V1)
               (0.03, 0.012, (-0.15, -0.25, -0.80)),   # S
               (0.26, 0.050, (0.25, 0.35, 0.15))]      # T
PVC_BEAT = [(0.00, 0.040, (-1.10, 1.60, 1.30)),        # wide, bizarre QRS, no P
            (0.30, 0.070, (0.45, -0.55, -0.40))]       # discordant T
P_ONLY = NORMAL_BEAT[:1]                               # AV block: P wave, no QRS


def make_ecg(n: int, rng: np.random.Generator, seconds: float = 6.0):
    """(n, 3, T) ECG-like signals and labels: 0 normal, 1 one PVC, 2 one dropped beat."""
    t = np.arange(int(seconds * FS)) / FS
    x = np.zeros((n, len(LEADS), len(t)), np.float32)
    y = rng.integers(0, 3, n)
    for i in range(n):
        rr = 60 / rng.uniform(60, 95)
        beats = np.arange(rng.uniform(0.3, rr), seconds - 0.3, rr)
        beats += rng.normal(0, 0.015, len(beats))
        kinds = [NORMAL_BEAT] * len(beats)
        special = rng.integers(1, len(beats) - 1)
        if y[i] == 1:
            kinds[special], beats[special] = PVC_BEAT, beats[special] - 0.35 * rr  # premature
        elif y[i] == 2:
            kinds[special] = P_ONLY
        for centre, waves in zip(beats, kinds):
            for offset, width, amps in waves:
                bump = np.exp(-0.5 * ((t - centre - offset) / width) ** 2)
                x[i] += np.outer(amps, bump).astype(np.float32)
        wander = 0.15 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6))
        x[i] += wander + rng.normal(0, 0.03, x[i].shape)
    return x, y


def ecg_net_1d() -> nn.Sequential:
    layers = OrderedDict(block1=demo.block(1, 3, 16, 9), pool1=nn.MaxPool1d(2),
                         block2=demo.block(1, 16, 32, 7), pool2=nn.MaxPool1d(2),
                         block3=demo.block(1, 32, 32, 7), pool3=nn.MaxPool1d(2),
                         block4=demo.block(1, 32, 32, 5),
                         gap=nn.AdaptiveAvgPool1d(1), flatten=nn.Flatten(), fc=nn.Linear(32, 3),
                         softmax=nn.Softmax(dim=1))
    return nn.Sequential(layers)


def row_block(cin: int, cout: int, k: int) -> nn.Sequential:
    """A 2D block that convolves along time only: the leads stay separate rows."""
    return nn.Sequential(nn.Conv2d(cin, cout, (1, k), padding=(0, k // 2)),
                         nn.BatchNorm2d(cout), nn.ReLU())


def ecg_net_2d() -> nn.Sequential:
    """The leads as a signal-image (1, leads, T); a 3 x 1 convolution mixes them at the end."""
    layers = OrderedDict(block1=row_block(1, 8, 9), pool1=nn.MaxPool2d((1, 2)),
                         block2=row_block(8, 16, 7), pool2=nn.MaxPool2d((1, 2)),
                         block3=row_block(16, 16, 7), pool3=nn.MaxPool2d((1, 2)),
                         block4=row_block(16, 16, 5),
                         mix=nn.Sequential(nn.Conv2d(16, 16, (3, 1), padding=(1, 0)), nn.ReLU()),
                         gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 3),
                         softmax=nn.Softmax(dim=1))
    return nn.Sequential(layers)


# ---- DNA ----------------------------------------------------------------------------------
def make_dna(n: int, rng: np.random.Generator, length: int = 100):
    """One-hot (n, 4, length) sequences of 60..length bases, zero-padded; label 1: a TATAAT."""
    x = np.zeros((n, 4, length), np.float32)
    y = rng.integers(0, 2, n)
    seqs = []
    for i in range(n):
        size = rng.integers(60, length + 1)
        seq = "".join(rng.choice(list(BASES), size))
        while MOTIF in seq:
            seq = seq.replace(MOTIF, "".join(rng.choice(list(BASES), len(MOTIF))))
        if y[i]:
            s = rng.integers(0, size - len(MOTIF))
            seq = seq[:s] + MOTIF + seq[s + len(MOTIF):]
        x[i, [BASES.index(b) for b in seq], np.arange(size)] = 1
        seqs.append(seq)
    return x, y, seqs


def dna_net() -> nn.Sequential:
    layers = OrderedDict(conv1=nn.Conv1d(4, 32, 7, padding=3), relu1=nn.ReLU(),
                         conv2=nn.Conv1d(32, 32, 5, padding=2), relu2=nn.ReLU(),
                         gap=nn.AdaptiveAvgPool1d(1), flatten=nn.Flatten(), fc=nn.Linear(32, 2))
    return nn.Sequential(layers)


# ---- every method on one item ---------------------------------------------------------------
EVERY_METHOD = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "gradcamelementwise",
                "eigencam", "eigengradcam", "scorecam", "ablationcam", "shapleycam", "kpcacam",
                "fem", "segeigencam", SSCAM(samples=8), ISCAM(samples=8), "smoothgradcam++",
                "reciprocam", "randomcam", "saliency", "input_x_gradient",
                "integrated_gradients", "smoothgrad", "guided_backprop", "deconvolution",
                "guided_gradcam", "fullgrad", Occlusion(), RISE(n_masks=1000),
                LIME(n_samples=400), KernelSHAP(n_samples=400)]


def every_method(exp, item: np.ndarray, target: int, layer: str):
    """The method names and their [0, 1] maps (methods, *spatial) of one item."""
    res = exp.explain(item[None], targets=target, layers=layer, methods=EVERY_METHOD)
    return res.methods, np.stack([res.cam(m)[0] for m in res.methods])


def method_grid(pictures: list[np.ndarray], names: list[str], suptitle: str, path: Path,
                columns: int = 8) -> None:
    """One RGB picture per method in a grid, each titled with the method's name."""
    rows = -(-len(pictures) // columns)
    fig = Figure(figsize=(1.6 * columns, 1.75 * rows), layout="constrained")
    for k, ax in enumerate(fig.subplots(rows, columns).ravel()):
        ax.set_axis_off()
        if k < len(pictures):
            ax.imshow(pictures[k])
            ax.set_title(viz.method_title(names[k]), fontsize=8)
    fig.suptitle(suptitle, fontsize=10)
    fig.savefig(path, dpi=110)
    report(path)


# ---- helpers ------------------------------------------------------------------------------
def pick(y: np.ndarray, predicted: np.ndarray, classes, per_class: int = 1) -> list[int]:
    """Items predicted right, the first `per_class` of each class in `classes`."""
    right = y == predicted
    return [int(i) for c in classes for i in np.flatnonzero(right & (y == c))[:per_class]]


def titles(res, rows, y_true) -> list[str]:
    """The title of each row: explained class and probability, prediction, truth."""
    return [viz.row_title(res, r, true_label=int(y_true[res.items[r]])) for r in rows]


def fit(name: str, net: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch: int,
        start: float) -> None:
    accuracy = demo.train(net, x, y, epochs, batch=batch)
    print(f"[{name}] train accuracy {accuracy:.0%} ({time.perf_counter() - start:.0f}s)")


def report(path: Path) -> None:
    print(f"  wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gallery"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    # -- ECG: a 1D CNN, and a 2D CNN on the leads as a signal-image --------------------------
    x, y = make_ecg(600, rng)
    x_test, y_test = x[:100], y[:100]
    net1, net2 = ecg_net_1d(), ecg_net_2d()
    fit("ecg 1D", net1, x[100:], y[100:], epochs=4, batch=32, start=start)
    fit("ecg 2D", net2, x[100:, None], y[100:], epochs=4, batch=32, start=start)

    exp = onnx_cam.Explainer(net1, example_input=x_test[:2], class_names=ECG_CLASSES)
    res = exp.explain(x_test, layers="block3")
    rows = pick(y_test, res.predicted, [1, 2])
    path = out / "ecg_signals.png"
    viz.signal_figure(x_test[rows], res.cam()[rows], res.score_range()[rows], fs=FS,
                      channel_names=LEADS, titles=titles(res, rows, y_test),
                      suptitle="Grad-CAM on a 1D CNN (block3): every lead coloured by the map",
                      colorbar_label="Grad-CAM importance", path=path)
    report(path)

    r = rows[0]
    names, cams = every_method(exp, x_test[r], int(res.predicted[r]), "block3")
    path = out / "every_method_signal.png"
    viz.heatmap_figure(cams, np.array([0.0, 1.0]), fs=FS, channel_names=[
        viz.method_title(n) for n in names], colorbar_label="normalised importance",
        titles=f"Every method on one ECG ({titles(res, [r], y_test)[0]}); CAMs at block3",
        figsize=(10, 9), path=path)
    report(path)

    exp2 = onnx_cam.Explainer(net2, example_input=x_test[:2, None], class_names=ECG_CLASSES)
    res = exp2.explain(x_test[:, None], layers="block4", methods="hirescam")
    (r,) = pick(y_test, res.predicted, [1])[:1]
    title = titles(res, [r], y_test)
    path = out / "ecg_signal_image.png"
    viz.signal_figure(x_test[r], res.cam()[r], res.score_range()[r], fs=FS, channel_names=LEADS,
                      titles=title, colorbar_label="HiResCAM importance",
                      suptitle="HiResCAM of a signal-image CNN (block4): one map per lead",
                      path=path)
    report(path)
    path = out / "ecg_heatmap.png"
    viz.heatmap_figure(res.cam()[r], res.score_range()[r], fs=FS, channel_names=LEADS,
                       titles=title, colorbar_label="HiResCAM importance", figsize=(10, 2.6),
                       path=path)
    report(path)

    # -- images ----------------------------------------------------------------------------
    x, y, _ = demo.make_scenes(500, rng, (48, 48), demo.SHAPES_2D, grow=2.0)
    x_test, y_test = x[:60], y[:60]
    net = demo.net_2d()
    fit("2d", net, x[60:], y[60:], epochs=5, batch=32, start=start)
    exp = onnx_cam.Explainer(net, example_input=x_test[:2], class_names=["square", "disc",
                                                                          "cross"])
    res = exp.explain(x_test, layers="pool2")
    rows = pick(y_test, res.predicted, [0, 1, 2])
    path = out / "shapes_overlay.png"
    viz.overlay_figure(x_test[rows], res.cam()[rows], res.score_range()[rows],
                       titles=titles(res, rows, y_test),
                       suptitle="Grad-CAM (layer pool2) over the input, jet, alpha 0.5",
                       colorbar_label="Grad-CAM importance", path=path)
    report(path)
    names, cams = every_method(exp, x_test[rows[1]], int(res.predicted[rows[1]]), "pool2")
    method_grid([viz.overlay_rgb(x_test[rows[1]], cam) for cam in cams], names,
                f"Every method on one image ({titles(res, [rows[1]], y_test)[0]}); CAMs at "
                "pool2", out / "every_method_image.png")
    disc = rows[1]
    con = exp.explain(x_test[[disc]], targets="disc", foils=[["square", "cross"]],
                      layers="pool2")  # two rows for the one item
    path = out / "shapes_contrastive.png"
    viz.overlay_figure(x_test[[disc]][con.items], con.cam(), con.score_range(), cmap="inferno",
                       titles=titles(con, range(len(con)), y_test[[disc]]),
                       suptitle="Contrastive Grad-CAM: why disc rather than square / cross",
                       colorbar_label="Grad-CAM importance", path=path)
    report(path)

    # -- volumes -----------------------------------------------------------------------------
    x, y, _ = demo.make_scenes(280, rng, (16, 32, 32), demo.SHAPES_3D, grow=1.0)
    x_test, y_test = x[:40], y[:40]
    net = demo.net_3d()
    fit("3d", net, x[40:], y[40:], epochs=3, batch=16, start=start)
    exp = onnx_cam.Explainer(net, example_input=x_test[:2], class_names=["ball", "bar"])
    res = exp.explain(x_test, layers="block2")
    (r,) = pick(y_test, res.predicted, [1])[:1]
    title = "Grad-CAM (block2) — " + titles(res, [r], y_test)[0]
    path = out / "volume_montage.png"
    viz.montage_figure(x_test[r], res.cam()[r], res.score_range()[r], title=title,
                       colorbar_label="Grad-CAM importance", path=path)
    report(path)
    (path,) = viz.volume_gif(x_test[r], res.cam()[r], res.score_range()[r], out / "volume.gif",
                             title=title, colorbar_label="Grad-CAM importance")
    report(path)
    names, cams = every_method(exp, x_test[r], int(res.predicted[r]), "block2")
    middle = x_test.shape[2] // 2
    method_grid([viz.overlay_rgb(x_test[r][:, middle], cam[middle]) for cam in cams], names,
                f"Every method on one volume, its middle slice ({titles(res, [r], y_test)[0]}); "
                "CAMs at block2", out / "every_method_volume.png")

    # -- DNA tokens --------------------------------------------------------------------------
    x, y, seqs = make_dna(900, rng)
    net = dna_net()
    fit("dna", net, x[100:], y[100:], epochs=6, batch=32, start=start)
    exp = onnx_cam.Explainer(net, example_input=x[:2], class_names=["no box", "TATA box"])
    res = exp.explain(x[:100], layers="relu2")
    (r,) = pick(y[:100], res.predicted, [1])[:1]
    path = out / "dna_tokens.png"
    viz.token_figure(seqs[r], res.cam()[r], res.score_range()[r], mask=x[r].sum(0) > 0,
                     title="Grad-CAM (relu2) — " + titles(res, [r], y)[0],
                     colorbar_label="Grad-CAM importance", path=path)
    report(path)
    print(f"gallery written to {out}/ in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
