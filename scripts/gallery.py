"""Regenerate the README's pictures (docs/gallery/) with onnx_cam.viz, from small models
trained here in seconds on generated data (no downloads; each section seeds itself):

    python scripts/gallery.py --out docs/gallery            # every section
    python scripts/gallery.py --only vit segmentation       # some sections' pictures only

Sections:
- ecg: ECG-like 3-lead signals (125 Hz, 6 s): normal rhythm, a premature ventricular beat
  (PVC) or a dropped beat; a 1D CNN, and a 2D CNN reading the leads as a signal-image
  (1, leads, T); every method on one ECG;
- metadata: several inputs, an ECG and (age, sex); the label needs both (a PVC is "PVC"
  below 60, "PVC, older" from 60 on); the maps cover the ECG, the metadata is fed as given;
- images: a square, a disc or a cross in noise (scripts/demo.py's data and CNN), also
  explained contrastively ("disc vs square") and by every method;
- volumes: a ball or a bar (scripts/demo.py's data and CNN): a montage, a GIF, every method;
- dna: one-hot sequences of 60 to 100 bases, zero-padded to 100, with or without a TATAAT
  box; the padding is left out of the picture;
- vit: a tiny ViT on the shapes: Grad-CAM and HiResCAM on a token-grid layer, the rollouts;
- segmentation: a U-Net on scenes of discs and squares, Segmentation targets with and
  without a mask;
- detection: a YOLO-style head on the same scenes, Detection targets beside EigenCAM.
SESS is left out of "every method": it needs a model with free spatial axes, which these
exports are not.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
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
SHAPE_CLASSES = ["square", "disc", "cross"]


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


# ---- several inputs: an ECG and (age, sex) --------------------------------------------------
METADATA_CLASSES = ["normal", "PVC", "PVC, older"]


class EcgWithMetadata(nn.Module):
    """Convolutions over the leads; (age, sex) through an MLP, joined before the head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(demo.block(1, 3, 16, 9), nn.MaxPool1d(2),
                                      demo.block(1, 16, 32, 7), nn.MaxPool1d(2),
                                      demo.block(1, 32, 32, 5))
        self.metadata = nn.Sequential(nn.Linear(2, 16), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, ecg, metadata):
        pooled = self.features(ecg).mean(-1)
        return self.head(torch.cat([pooled, self.metadata(metadata)], 1))


def make_ecg_with_metadata(n: int, rng: np.random.Generator):
    """ECGs with a PVC or none, (age / 100, sex), and a label needing both: a PVC is "PVC"
    below age 60 and "PVC, older" from 60 on."""
    x, beat = make_ecg(3 * n, rng)
    keep = np.flatnonzero(beat != 2)[:n]          # normal rhythm or one PVC
    x, pvc = x[keep], beat[keep] == 1
    age = rng.uniform(20, 90, len(keep))
    metadata = np.stack([age / 100, rng.integers(0, 2, len(keep))], 1).astype(np.float32)
    label = np.where(pvc, np.where(age >= 60, 2, 1), 0)
    return x, metadata, label


def train_two_inputs(net: nn.Module, x, metadata, y, epochs: int = 6, batch: int = 32) -> float:
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    tensors = [torch.from_numpy(a) for a in (x, metadata, y)]
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for s in range(0, len(y), batch):
            idx = order[s:s + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(tensors[0][idx], tensors[1][idx]),
                                               tensors[2][idx])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return float((net(tensors[0], tensors[1]).argmax(1) == tensors[2]).float().mean())


# ---- a tiny ViT -----------------------------------------------------------------------------
class TinyViT(nn.Module):
    """A convolution, then conv patches (6 x 6 grid of 8 x 8 pixels), a class token, two
    pre-norm blocks. The first convolution (a "hybrid" stem) lets it learn from 440 images."""

    def __init__(self, width: int = 32, heads: int = 2, classes: int = 3):
        super().__init__()
        self.stem = demo.block(2, 1, 16)
        self.patch_embed = nn.Conv2d(16, width, 8, stride=8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 37, width) * 0.02)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(2)])
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, classes)

    def forward(self, x):
        tokens = self.patch_embed(self.stem(x)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], 1)
        return self.head(self.norm(self.blocks(tokens + self.pos_embed))[:, 0])


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.norm1, self.norm2 = heads, nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(),
                                 nn.Linear(2 * width, width))

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(n, t, c))
        return x + self.mlp(self.norm2(x))


# ---- dense scenes: segmentation and detection ------------------------------------------------
DENSE_CLASSES = ["background", "disc", "square"]
SCENE = 48        # pixels a side
STRIDE = 8        # the detector's cell size: a 6 x 6 grid of boxes


def make_dense_scenes(n: int, rng: np.random.Generator, objects: int = 3):
    """Noisy images holding `objects` discs or squares of random sizes, apart: the images
    (n, 1, S, S), label maps (n, S, S) (0 background, 1 disc, 2 square) and boxes
    (n, objects, 5): pixel corners x1, y1, x2, y2 (ends exclusive) and class."""
    x = rng.normal(0, 0.3, (n, 1, SCENE, SCENE)).astype(np.float32)
    labels = np.zeros((n, SCENE, SCENE), np.int64)
    boxes = np.zeros((n, objects, 5), np.int64)
    yy, xx = np.ogrid[:SCENE, :SCENE]
    for i in range(n):
        k = 0
        while k < objects:
            half = int(rng.integers(4, 9))
            cy, cx = rng.integers(half, SCENE - half, 2)
            box = (cx - half, cy - half, cx + half + 1, cy + half + 1)
            if any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2
                   and b[1] < box[3] + 2 for b in boxes[i, :k]):
                continue
            cls = int(rng.integers(1, 3))
            shape = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (half + 0.5) ** 2 if cls == 1
                     else (abs(yy - cy) <= half) & (abs(xx - cx) <= half))
            x[i, 0][shape] += 1.0
            labels[i][shape] = cls
            boxes[i, k] = (*box, cls)
            k += 1
    return x, labels, boxes


class TinyUNet(nn.Module):
    """Two poolings down, two transposed convolutions up, skip connections concatenated."""

    def __init__(self):
        super().__init__()
        self.enc1 = demo.block(2, 1, 8)
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), demo.block(2, 8, 16))
        self.bottom = nn.Sequential(nn.MaxPool2d(2), demo.block(2, 16, 32), demo.block(2, 32, 32))
        self.up2, self.dec2 = nn.ConvTranspose2d(32, 16, 2, 2), demo.block(2, 32, 16)
        self.up1, self.dec1 = nn.ConvTranspose2d(16, 8, 2, 2), demo.block(2, 16, 8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([self.up2(self.bottom(e2)), e2], 1))
        return self.out(self.dec1(torch.cat([self.up1(d2), e1], 1)))


class TinyYolo(nn.Module):
    """A YOLO-style raw head: per cell of a 6 x 6 grid one box (cx, cy, w, h in pixels,
    decoded from its cell), objectness and the class scores (disc, square) after sigmoid;
    output (N, 36 boxes, 7)."""

    def __init__(self):
        super().__init__()
        self.block1 = demo.block(2, 1, 8)
        self.block2 = nn.Sequential(nn.MaxPool2d(2), demo.block(2, 8, 16))
        self.block3 = nn.Sequential(nn.MaxPool2d(2), demo.block(2, 16, 32))
        self.block4 = nn.Sequential(nn.MaxPool2d(2), demo.block(2, 32, 32))
        self.head = nn.Conv2d(32, 7, 1)
        cells = SCENE // STRIDE
        ys, xs = torch.meshgrid(torch.arange(cells * 1.0), torch.arange(cells * 1.0),
                                indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()])[None])

    def forward(self, x):
        p = self.head(self.block4(self.block3(self.block2(self.block1(x))))).flatten(2)
        xy = (torch.sigmoid(p[:, :2]) + self.grid) * STRIDE
        wh = torch.exp(p[:, 2:4]) * 2 * STRIDE
        return torch.cat([xy, wh, torch.sigmoid(p[:, 4:])], 1).transpose(1, 2)


def train_yolo(net: TinyYolo, x: np.ndarray, boxes: np.ndarray, epochs: int = 12,
               batch: int = 16) -> None:
    """Each object is assigned to the cell holding its centre: binary cross-entropy on every
    cell's objectness, on the assigned cells' classes, and an L1 loss on their boxes."""
    cells = SCENE // STRIDE
    n = len(x)
    objectness = np.zeros((n, cells * cells), np.float32)
    target = np.zeros((n, cells * cells, 6), np.float32)   # cx, cy, w, h, disc, square
    for i, k in zip(*np.nonzero(boxes[:, :, 4])):
        x1, y1, x2, y2, cls = boxes[i, k]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        cell = int(cy // STRIDE) * cells + int(cx // STRIDE)
        objectness[i, cell] = 1
        target[i, cell] = (cx, cy, x2 - x1, y2 - y1, cls == 1, cls == 2)
    xt, obj_t, box_t = map(torch.from_numpy, (x, objectness, target))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    bce = nn.functional.binary_cross_entropy
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(batch):
            out = net(xt[idx]).clamp(0, None)
            pos = obj_t[idx] > 0
            loss = (bce(out[..., 4].clamp(1e-6, 1 - 1e-6), obj_t[idx])
                    + bce(out[..., 5:][pos].clamp(1e-6, 1 - 1e-6), box_t[idx][..., 4:][pos])
                    + (out[..., :4][pos] - box_t[idx][..., :4][pos]).abs().mean() / STRIDE)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()


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
        start: float, lr: float = 1e-2) -> None:
    accuracy = demo.train(net, x, y, epochs, batch=batch, lr=lr)
    print(f"[{name}] train accuracy {accuracy:.0%} ({time.perf_counter() - start:.0f}s)")


def grey(item: np.ndarray) -> np.ndarray:
    """The input item as an RGB picture, nothing overlaid."""
    return viz.overlay_rgb(item, np.zeros(item.shape[1:]), alpha=0.0)


def panel_figure(panels, suptitle: str, path: Path, size: float = 2.0) -> None:
    """Rows of panels (title, RGB picture, draw or None; draw(ax) adds contours or boxes)
    and one colour bar: the overlays' normalised importance (jet)."""
    rows, columns = len(panels), len(panels[0])
    fig = Figure(figsize=(size * columns + 0.8, size * rows + 0.7), layout="constrained")
    axes = np.asarray(fig.subplots(rows, columns)).reshape(rows, columns)
    for row, row_axes in zip(panels, axes):
        for (title, picture, draw), ax in zip(row, row_axes):
            ax.imshow(picture)
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
            if draw is not None:
                draw(ax)
    fig.colorbar(ScalarMappable(cmap="jet"), ax=axes.ravel().tolist(), shrink=0.8,
                 label="normalised importance")
    fig.suptitle(suptitle, fontsize=9)
    fig.savefig(path, dpi=110)
    report(path)


def report(path: Path) -> None:
    print(f"  wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def seeded(seed: int) -> np.random.Generator:
    """Seed torch and return a numpy generator: each section is reproducible on its own."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# ---- sections: each writes its pictures -----------------------------------------------------
def ecg_section(out: Path, start: float) -> None:
    """A 1D CNN, and a 2D CNN on the leads as a signal-image."""
    rng = seeded(0)
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


def metadata_section(out: Path, start: float) -> None:
    """Several inputs: an ECG and (age, sex); the maps cover the ECG."""
    rng = seeded(0)
    x, metadata, y = make_ecg_with_metadata(700, rng)
    net = EcgWithMetadata()
    accuracy = train_two_inputs(net, x[100:], metadata[100:], y[100:].astype(np.int64))
    print(f"[ecg + metadata] train accuracy {accuracy:.0%} ({time.perf_counter() - start:.0f}s)")
    test = {"ecg": x[:100], "metadata": metadata[:100]}
    exp = onnx_cam.Explainer(net, example_input=(torch.from_numpy(x[:2]),
                                                 torch.from_numpy(metadata[:2])),
                             class_names=METADATA_CLASSES)
    res = exp.explain(test, layers="features.4")
    rows = pick(y[:100], res.predicted, [1, 2])
    row_titles = [f"{viz.row_title(res, r, true_label=int(y[r]))}; age "
                  f"{100 * metadata[r, 0]:.0f}, sex {int(metadata[r, 1])}" for r in rows]
    path = out / "ecg_with_metadata.png"
    viz.signal_figure(x[rows], res.cam()[rows], res.score_range()[rows], fs=FS,
                      channel_names=LEADS, titles=row_titles,
                      suptitle="Grad-CAM over the ECG of a model also fed (age, sex)",
                      colorbar_label="Grad-CAM importance", path=path)
    report(path)


def images_section(out: Path, start: float) -> None:
    rng = seeded(1)
    x, y, _ = demo.make_scenes(500, rng, (48, 48), demo.SHAPES_2D, grow=2.0)
    x_test, y_test = x[:60], y[:60]
    net = demo.net_2d()
    fit("2d", net, x[60:], y[60:], epochs=5, batch=32, start=start)
    exp = onnx_cam.Explainer(net, example_input=x_test[:2], class_names=SHAPE_CLASSES)
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


def volumes_section(out: Path, start: float) -> None:
    rng = seeded(2)
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


def dna_section(out: Path, start: float) -> None:
    rng = seeded(3)
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


def vit_section(out: Path, start: float) -> None:
    """A tiny ViT: Grad-CAM on a token-grid layer beside the two rollouts."""
    rng = seeded(4)
    x, y, region = demo.make_scenes(500, rng, (48, 48), demo.SHAPES_2D, grow=2.0)
    x_test, y_test = x[:60], y[:60]
    net = nn.Sequential(OrderedDict(vit=TinyViT()))
    fit("vit", net, x[60:], y[60:], epochs=20, batch=32, start=start, lr=3e-3)
    exp = onnx_cam.Explainer(net, example_input=x_test[:2], class_names=SHAPE_CLASSES)
    methods = ["gradcam", "hirescam", "attention_rollout", "gradient_rollout"]
    res = exp.explain(x_test, layers="vit.blocks.1.norm1", methods=methods)
    print("  pointing game (map maximum on the shape, 60 held-out images): " + ", ".join(
        f"{viz.method_title(m)} {demo.pointing_game(res.cam(m), region[:60])[0]:.0%}"
        for m in methods))
    rows = pick(y_test, res.predicted, [0, 1, 2])
    panels = [[(titles(res, [r], y_test)[0].replace(" · ", "\n"), grey(x_test[r]), None)]
              + [(viz.method_title(m), viz.overlay_rgb(x_test[r], res.cam(m)[r]), None)
                 for m in methods] for r in rows]
    panel_figure(panels, "A tiny ViT (6 x 6 patches of 8 x 8 pixels, a class token): Grad-CAM "
                 "and HiResCAM on the token grid\nof vit.blocks.1.norm1 (class token dropped), "
                 "and the two rollouts", out / "vit_shapes.png")


def segmentation_section(out: Path, start: float) -> None:
    """A small U-Net on scenes of discs and squares: why "disc" everywhere, on one disc."""
    rng = seeded(5)
    x, labels, boxes = make_dense_scenes(400, rng)
    x_test, labels_test, boxes_test = x[:40], labels[:40], boxes[:40]
    net = nn.Sequential(OrderedDict(unet=TinyUNet()))  # demo.train indexes a Sequential
    fit("segmentation (pixels)", net, x[40:], labels[40:], epochs=6, batch=16, start=start)
    exp = onnx_cam.Explainer(net, example_input=x_test[:2], class_names=DENSE_CLASSES)
    discs = np.array([(b[:, 4] == 1).sum() for b in boxes_test])
    r = int(np.flatnonzero((discs == 2) & ((boxes_test[:, :, 4] == 2).sum(1) >= 1))[0])
    one_disc = np.zeros(labels_test[r].shape, bool)
    x1, y1, x2, y2, _ = boxes_test[r][boxes_test[r][:, 4] == 1][0]
    one_disc[y1:y2, x1:x2] = labels_test[r, y1:y2, x1:x2] == 1
    targets = [[onnx_cam.Segmentation("disc"), onnx_cam.Segmentation("disc", mask=one_disc),
                onnx_cam.Segmentation("square")]]
    res = exp.explain(x_test[[r]], targets=targets, layers="unet.dec2",
                      methods=["gradcam", "hirescam"])
    predicted = res.predicted[0]

    def label_contours(ax):
        ax.contour(predicted == 1, levels=[0.5], colors="yellow", linewidths=1.2)
        ax.contour(predicted == 2, levels=[0.5], colors="cyan", linewidths=1.2)

    def mask_outline(ax):
        ax.contour(one_disc, levels=[0.5], colors="white", linewidths=1.2, linestyles="--")

    shown = [("gradcam", 0, 'Segmentation("disc")'),
             ("gradcam", 1, 'Segmentation("disc", mask),\nGrad-CAM'),
             ("hirescam", 1, 'Segmentation("disc", mask),\nHiResCAM'),
             ("gradcam", 2, 'Segmentation("square")')]
    panels = [[("input; predicted disc (yellow),\nsquare (cyan)", grey(x_test[r]), label_contours)]
              + [(name, viz.overlay_rgb(x_test[r], res.cam(method)[k]),
                  mask_outline if k == 1 else None) for method, k, name in shown]]
    panel_figure(panels, "Segmentation targets on a U-Net, CAMs at its decoder (unet.dec2); "
                 "mask: one disc (dashed).\nGrad-CAM's channel weights light every disc, "
                 "HiResCAM keeps to the mask", out / "segmentation.png", size=2.3)


def detection_section(out: Path, start: float) -> None:
    """A YOLO-style head on the same scenes: one box's Detection Grad-CAM, and EigenCAM."""
    rng = seeded(6)
    x, _, boxes = make_dense_scenes(400, rng)
    x_test, boxes_test = x[:40], boxes[:40]
    net = TinyYolo()
    train_yolo(net, x[40:], boxes[40:])
    print(f"[detection] trained ({time.perf_counter() - start:.0f}s)")
    exp = onnx_cam.Explainer(net, example_input=x_test[:2], class_names=["disc", "square"])
    r = int(np.flatnonzero((boxes_test[:, :, 4] > 0).sum(1) == 3)[0])
    objects = boxes_test[r][boxes_test[r][:, 4] > 0]
    disc = tuple(float(v) for v in objects[objects[:, 4] == 1][0, :4])
    square = tuple(float(v) for v in objects[objects[:, 4] == 2][0, :4])
    res = exp.explain(x_test[[r]], targets=[[
        onnx_cam.Detection(disc, cls="disc", objectness=True),
        onnx_cam.Detection(square, cls="square", objectness=True)]], layers="block3",
        methods=["gradcam", "hirescam"])
    eigen = exp.explain(x_test[[r]], methods="eigencam", layers="block3")
    with torch.no_grad():
        found = net(torch.from_numpy(x_test[[r]]))[0].numpy()
    kept = found[found[:, 4] * found[:, 5:].max(1) > 0.5]
    blank = grey(x_test[r])

    def draw(*chosen, colour="white"):
        def boxes_on(ax):
            for cx, cy, w, h in chosen:
                ax.add_patch(Rectangle((cx - w / 2 - 0.5, cy - h / 2 - 0.5), w, h, fill=False,
                                       edgecolor=colour, linewidth=1.2))
        return boxes_on

    def cxcywh(c):
        return ((c[0] + c[2]) / 2, (c[1] + c[3]) / 2, c[2] - c[0], c[3] - c[1])

    panels = [[("input; boxes kept\n(confidence > 0.5)", blank,
                draw(*kept[:, :4], colour="lime")),
               ("Grad-CAM, disc box", viz.overlay_rgb(x_test[r], res.cam("gradcam")[0]),
                draw(cxcywh(disc))),
               ("HiResCAM, disc box", viz.overlay_rgb(x_test[r], res.cam("hirescam")[0]),
                draw(cxcywh(disc))),
               ("HiResCAM, square box", viz.overlay_rgb(x_test[r], res.cam("hirescam")[1]),
                draw(cxcywh(square))),
               (f"{viz.method_title('eigencam')} (no target)",
                viz.overlay_rgb(x_test[r], eigen.cam()[0]), None)]]
    panel_figure(panels, 'Detection(box, "disc" / "square", objectness=True) on a YOLO-style '
                 "head, CAMs at block3:\nGrad-CAM's channel weights light other objects too, "
                 "HiResCAM keeps to the box's cell", out / "detection.png", size=2.3)


SECTIONS = {"ecg": ecg_section, "metadata": metadata_section, "images": images_section,
            "volumes": volumes_section, "dna": dna_section, "vit": vit_section,
            "segmentation": segmentation_section, "detection": detection_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gallery"))
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), metavar="NAME",
                        help=f"write only these sections' pictures: {', '.join(SECTIONS)}")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.set_num_threads(1)
    for name in args.only or SECTIONS:
        SECTIONS[name](args.out, start)
    print(f"gallery written to {args.out}/ in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
