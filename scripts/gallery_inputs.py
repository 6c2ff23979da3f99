"""The README's "Several inputs" picture (docs/gallery/ecg_with_metadata.png): a model reading
an ECG-like signal and a metadata vector (age, sex), trained here in seconds on generated data
(scripts/gallery.py's ECGs; fixed seeds, no downloads):

    python scripts/gallery_inputs.py --out docs/gallery

The label needs both inputs: a premature beat (PVC) is "PVC" below age 60 and "PVC, older"
from 60 on; a normal rhythm is "normal". The maps cover the ECG; the metadata is fed as given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import onnx_cam
from onnx_cam import viz

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo  # noqa: E402
import gallery  # noqa: E402  (the ECG-like signals)

CLASSES = ["normal", "PVC", "PVC, older"]


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


def make_data(n: int, rng: np.random.Generator):
    """ECGs with a PVC or none, (age / 100, sex) and the label combining them."""
    x, beat = gallery.make_ecg(3 * n, rng)
    keep = np.flatnonzero(beat != 2)[:n]          # normal rhythm or one PVC
    x, pvc = x[keep], beat[keep] == 1
    age = rng.uniform(20, 90, len(keep))
    metadata = np.stack([age / 100, rng.integers(0, 2, len(keep))], 1).astype(np.float32)
    label = np.where(pvc, np.where(age >= 60, 2, 1), 0)
    return x, metadata, label


def train(net: nn.Module, x, metadata, y, epochs: int = 6, batch: int = 32) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gallery"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, metadata, y = make_data(700, rng)
    net = EcgWithMetadata()
    accuracy = train(net, x[100:], metadata[100:], y[100:].astype(np.int64))
    print(f"train accuracy {accuracy:.0%} ({time.perf_counter() - start:.0f}s)")
    test = {"ecg": x[:100], "metadata": metadata[:100]}
    exp = onnx_cam.Explainer(net, example_input=(torch.from_numpy(x[:2]),
                                                 torch.from_numpy(metadata[:2])),
                             class_names=CLASSES)
    res = exp.explain(test, layers="features.4")
    rows = gallery.pick(y[:100], res.predicted, [1, 2])
    titles = [f"{viz.row_title(res, r, true_label=int(y[r]))}; age "
              f"{100 * metadata[r, 0]:.0f}, sex {int(metadata[r, 1])}" for r in rows]
    path = out / "ecg_with_metadata.png"
    viz.signal_figure(x[rows], res.cam()[rows], res.score_range()[rows], fs=gallery.FS,
                      channel_names=gallery.LEADS, titles=titles,
                      suptitle="Grad-CAM over the ECG of a model also fed (age, sex)",
                      colorbar_label="Grad-CAM importance", path=path)
    gallery.report(path)


if __name__ == "__main__":
    main()
