"""Time ``resize_normalize`` against ``F.interpolate`` + min-max normalisation in PyTorch.

Usage: ``python benchmarks/bench_kernels.py [--repeat 50] [--threads N]``. Both sides run on
the CPU with the same number of threads, after a warm-up (which also triggers Numba
compilation); the table shows the best (minimum) wall time per call over ``--repeat`` calls,
which is the least noisy statistic on a shared machine, and the ratio numba / torch
(< 1: numba faster). ``max |diff|`` compares the two normalised outputs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numba
import numpy as np
import torch
import torch.nn.functional as F

from onnx_cam.kernels import resize_normalize

CASES = [
    ("2D bilinear", (16, 7, 7), (224, 224)),
    ("1D linear", (16, 40), (5000,)),
    ("3D trilinear", (4, 4, 14, 14), (16, 112, 112)),
    ("3D trilinear", (8, 4, 8, 8), (32, 64, 64)),  # bench_core's 3D CNN at stage4
]
MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def torch_resize_normalize(x: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
    """The PyTorch baseline: interpolate, then per-item min-max (zeros for constant items)."""
    mode = MODES[len(out_shape)]
    y = F.interpolate(x[:, None], size=out_shape, mode=mode, align_corners=False)[:, 0]
    flat = y.reshape(y.shape[0], -1)
    mn = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - mn
    span = torch.where(span > 0, span, torch.ones_like(span))  # constant item -> zeros
    return flat.sub_(mn).div_(span).reshape(y.shape)  # y is a fresh tensor: in place is safe


def best_time(fn: Callable[[], object], repeat: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per case")
    parser.add_argument("--threads", type=int, default=0, help="threads for both (0: numba's)")
    args = parser.parse_args()

    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    print(f"threads: numba={threads} torch={torch.get_num_threads()}  repeat={args.repeat}")
    header = f"{'case':<14}{'input':<18}{'output':<16}{'numba ms':>10}{'torch ms':>10}"
    print(header + f"{'ratio':>8}{'max |diff|':>12}")
    print("-" * (len(header) + 20))
    rng = np.random.default_rng(0)
    for name, in_shape, out_shape in CASES:
        x = rng.standard_normal(in_shape).astype(np.float32)
        xt = torch.from_numpy(x)
        t_numba = best_time(lambda x=x, o=out_shape: resize_normalize(x, o), args.repeat)
        t_torch = best_time(lambda xt=xt, o=out_shape: torch_resize_normalize(xt, o), args.repeat)
        ours = resize_normalize(x, out_shape)[0]
        diff = np.abs(ours - torch_resize_normalize(xt, out_shape).numpy())
        print(
            f"{name:<14}{str(in_shape):<18}{str(out_shape):<16}{t_numba * 1e3:>10.3f}"
            f"{t_torch * 1e3:>10.3f}{t_numba / t_torch:>8.2f}{diff.max():>12.2e}"
        )


if __name__ == "__main__":
    main()
