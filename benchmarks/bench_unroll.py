"""Unrolled Loops: what explaining through a Keras GRU costs as its sequence grows.

tf2onnx writes a Keras GRU as a Loop; onnx-cam unrolls it into one copy of the body per step
(onnx_cam/graph/unroll.py). For Conv1D(32) -> GRU(64, return_sequences=True) -> Conv1D(32) ->
GlobalAveragePooling1D -> Dense(4), batch 16, per sequence length T:

- nodes: the forward graph's node count after unrolling;
- load: `Explainer(file)` (reading, unrolling, folding, shape inference, the layer catalogue);
- first explain: the first `explain(x, layers="conv", methods="gradcam")`, which builds the
  gradient graph and its ONNX Runtime session;
- explain: the median of `--repeats` later calls (the session cached);
- inference: the tf2onnx file (with its Loop) in a default `InferenceSession`;
- peak RSS: the process's peak resident memory so far (TensorFlow included; rows run in
  increasing T, so each row's growth is what its T added);
- tape: Grad-CAM at the same layer with tf.GradientTape on the Keras model, in a
  tf.function (traced before timing): the reference.

    python benchmarks/bench_unroll.py                 # T = 64, 256, 1024 (~10 min)
    python benchmarks/bench_unroll.py --lengths 64 256 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_metrics import timed  # noqa: E402

import onnx_cam  # noqa: E402
from onnx_cam.converters import export_keras  # noqa: E402

L = keras.layers
BATCH, CHANNELS = 16, 8


def gru_model(length: int):
    inp = keras.Input((length, CHANNELS))
    h = L.Conv1D(32, 5, padding="same", activation="relu", name="conv")(inp)
    h = L.GRU(64, return_sequences=True, name="gru")(h)
    h = L.Conv1D(32, 3, padding="same", activation="relu", name="conv2")(h)
    h = L.GlobalAveragePooling1D(name="gap")(h)
    return keras.Model(inp, L.Dense(4, name="logits")(h))


def tape_gradcam(model, x):
    below = keras.Model(model.inputs[0], model.get_layer("conv").output)
    above = keras.Model(model.get_layer("conv").output, model.output)

    @tf.function
    def run():
        acts = below(x)
        with tf.GradientTape() as tape:
            tape.watch(acts)
            logits = above(acts)
            score = tf.reduce_sum(tf.reduce_max(logits, axis=1))
        grads = tape.gradient(score, acts)
        return tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, 1, keepdims=True) * acts, -1))
    return run


def row(length: int, repeats: int) -> str:
    keras.utils.set_random_seed(0)
    model = gru_model(length)
    x = np.random.default_rng(0).standard_normal((BATCH, length, CHANNELS)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "gru.onnx")
        export_keras(model, path)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        start = time.perf_counter()
        exp = onnx_cam.Explainer(path)
        load = time.perf_counter() - start
    nodes = len(exp.model.graph(exp.model.default_spatial_shape()).nodes)
    start = time.perf_counter()
    exp.explain(x, layers="conv", methods="gradcam")
    first = time.perf_counter() - start
    explain = timed(lambda: exp.explain(x, layers="conv", methods="gradcam"), repeats)
    feed = {session.get_inputs()[0].name: x}
    infer = timed(lambda: session.run(None, feed), repeats)
    tape = tape_gradcam(model, x)
    tape()
    reference = timed(tape, repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return (f"| {length} | {nodes} | {load:.1f} | {first:.1f} | {peak:.1f} | "
            f"{explain * 1e3:.0f} | {infer * 1e3:.0f} | {reference * 1e3:.0f} | "
            f"{explain / infer:.2f} | {explain / reference:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, tensorflow {tf.__version__}, {os.cpu_count()} cores, "
          f"batch {BATCH}, median of {args.repeats}")
    print("| T | nodes | load (s) | first explain (s) | peak RSS (GiB) | explain (ms) "
          "| inference (ms) | tape Grad-CAM (ms) | explain / inference | explain / tape |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        print(row(length, args.repeats), flush=True)


if __name__ == "__main__":
    main()
