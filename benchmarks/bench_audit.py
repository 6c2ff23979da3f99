"""Audit throughput and peak memory: the 12-lead ECG ResNet over a memory-mapped dataset,
one process vs a local Dask cluster of 2 worker processes; first, in this process, the audit's
items per second as a ratio of plain ONNX Runtime inference over the same file, chunks,
batches and threads.

    python benchmarks/bench_audit.py                 # 20,000 items of 12 x 5000 (4.8 GB .npy)
    python benchmarks/bench_audit.py --items 2000    # a quicker look
    python benchmarks/bench_audit.py --items 1000 --only-ratio --rounds 3

Each audit runs as `onnx-cam audit` in a fresh process; the script samples the resident memory
of that process and all its descendants (Dask's scheduler, nannies and workers included)
every 0.2 s and reports the peak of their sum, with items per second over the whole command.
Both runs write float16 Grad-CAMs at layer4 into a Zarr store; the script checks the two
stores hold the same maps.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from bench_core import ECGResNet1d, prepare

from onnx_cam.audit import AuditStore
from onnx_cam.converters import export_torch

LEADS, SAMPLES = 12, 5000


def write_dataset(path: Path, items: int, seed: int = 0) -> None:
    """A memory-mapped (items, 12, 5000) float32 .npy written block by block."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                    shape=(items, LEADS, SAMPLES))
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLES) / 500.0
    for start in range(0, items, 1000):
        n = min(1000, items - start)
        beat = np.sin(2 * np.pi * rng.uniform(0.8, 2.0, (n, 1, 1)) * t)
        out[start:start + n] = beat + 0.3 * rng.standard_normal((n, LEADS, SAMPLES))
    out.flush()
    del out


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak summed RSS (bytes) of `command` and its descendants."""
    start = time.perf_counter()
    job = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while job.poll() is None:
        total = 0
        for proc in [job, *job.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if job.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{job.stderr.read().decode()}")
    return seconds, peak


def plain_inference(model: Path, data: Path, chunk_items: int, batch_size: int) -> float:
    """Seconds of plain ONNX Runtime inference over the .npy, read chunk by chunk as the audit
    reads it, run batch by batch (ONNX Runtime's default threads, as the audit's)."""
    import onnxruntime as ort

    from onnx_cam.audit.datasets import NpyDataset
    start = time.perf_counter()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name, dataset = session.get_inputs()[0].name, NpyDataset(str(data))
    for first in range(0, len(dataset), chunk_items):
        x = dataset.read(first, min(first + chunk_items, len(dataset))).x
        for b in range(0, len(x), batch_size):
            session.run(None, {name: x[b:b + batch_size]})
    return time.perf_counter() - start


def audit_seconds(model: Path, data: Path, store: Path, chunk_items: int,
                  batch_size: int) -> float:
    """Seconds of onnx_cam.audit.run (Grad-CAM at layer4), everything included (model loading,
    store creation, statistics, summary)."""
    from onnx_cam.audit import run
    start = time.perf_counter()
    run(str(model), str(data), str(store), layers="layer4", chunk_items=chunk_items,
        batch_size=batch_size, progress=False)
    return time.perf_counter() - start


def ratio_table(work: Path, args) -> None:
    """Medians over rounds, the two runs alternating (the machine may be shared: compare the
    ratios, not the seconds)."""
    model, data = work / "ecg.onnx", work / "ecg.npy"
    inference, audit = [], []
    for r in range(args.rounds):
        inference.append(plain_inference(model, data, args.chunk_items, args.batch_size))
        audit.append(audit_seconds(model, data, work / f"r{r}.zarr", args.chunk_items,
                                   args.batch_size))
    ratios = [i / a for i, a in zip(inference, audit)]
    print(f"\n{args.items} items, chunks of {args.chunk_items}, batches of {args.batch_size}, "
          f"{psutil.cpu_count()} cores, {args.rounds} rounds")
    print(f"audit items/s vs plain ONNX Runtime inference: {np.median(ratios):.2f}x median "
          f"(rounds: {' '.join(f'{r:.2f}' for r in ratios)})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--chunk-items", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", help="where the dataset and stores go (default: a temp "
                        "folder, removed at the end)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the ratio table")
    parser.add_argument("--only-ratio", action="store_true",
                        help="skip the 1 process / Dask commands")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        net = prepare(ECGResNet1d(), (8, LEADS, SAMPLES), seed=0)
        export_torch(net, torch.randn(2, LEADS, SAMPLES), work / "ecg.onnx")
        print(f"writing {args.items} x {LEADS} x {SAMPLES} float32 "
              f"({args.items * LEADS * SAMPLES * 4 / 1e9:.1f} GB) ...", flush=True)
        write_dataset(work / "ecg.npy", args.items)
        ratio_table(work, args)
        if args.only_ratio:
            return
        base = [sys.executable, "-m", "onnx_cam.cli", "audit", str(work / "ecg.onnx"),
                str(work / "ecg.npy"), "--layer", "layer4", "--quiet",
                "--chunk-items", str(args.chunk_items), "--batch-size", str(args.batch_size)]
        rows = []
        for name, extra in (("1 process", []), ("Dask, 2 workers", ["--workers", "2"])):
            store = work / f"{name.split()[0]}.zarr"
            seconds, peak = measure([*base, "--store", str(store), *extra])
            rows.append((name, seconds, peak, store))
            print(f"  {name}: {seconds:.1f} s", flush=True)
        a, b = (AuditStore(r[3]) for r in rows)
        same = all(np.array_equal(a.cams(*m)[:], b.cams(*m)[:]) for m in a.maps)
    single = rows[0][1]
    print(f"\nAudit of {args.items} ECG items (12 x 5000), Grad-CAM at layer4, "
          f"chunks of {args.chunk_items}, batches of {args.batch_size}, "
          f"{psutil.cpu_count()} cores")
    print(f"{'run':<18}{'seconds':>9}{'items/s':>10}{'vs 1 process':>14}{'peak RSS':>11}")
    for name, seconds, peak, _ in rows:
        print(f"{name:<18}{seconds:>9.1f}{args.items / seconds:>10.1f}"
              f"{single / seconds:>13.2f}x{peak / 2**30:>9.2f} GiB")
    print(f"dataset on disk {args.items * LEADS * SAMPLES * 4 / 2**30:.2f} GiB; "
          f"stores identical: {same}")


if __name__ == "__main__":
    main()
