"""ONNX Runtime sessions: provider choice and thread settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import onnx
import onnxruntime as ort

from .errors import OnnxCamError, UnsupportedModelError
from .graph.lift_1d import lift_1d

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are made. `providers=None` picks CUDA when onnxruntime-gpu offers it."""

    providers: tuple | None = None
    intra_op_threads: int = 0       # 0: ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 0
    optimization: str = "all"       # "all", "extended", "basic" or "none"
    # Whether ONNX Runtime's threads spin-wait for work instead of sleeping: "during runs"
    # (stop spinning when a run ends), "always" (ONNX Runtime's default: they go on spinning
    # after a run, taking the cores the CAM kernels need next) or "never"; True / False mean
    # "always" / "never".
    spinning: str | bool = "never"
    # Keep the ops ONNX Runtime would fold into convolution weights or re-lay out (NCHWc)
    # separate, so every value rounds as in the unfused graph (as torch's eval forward does):
    # slower, for when a ReLU sign or max winner decided by rounding matters (check_ties).
    exact_routes: bool = False

    def __post_init__(self):
        if isinstance(self.spinning, bool):
            object.__setattr__(self, "spinning", "always" if self.spinning else "never")
        for field, value, allowed in (("optimization", self.optimization, tuple(_LEVELS)),
                                      ("spinning", self.spinning, tuple(_SPINNING))):
            if value not in allowed:
                raise OnnxCamError(f"RuntimeOptions({field}={value!r}) is not one of "
                                   f"{', '.join(map(repr, allowed))}: pass one of those.")

    def resolved_providers(self) -> list:
        if self.providers is not None:
            return list(self.providers)
        available = ort.get_available_providers()
        return [CUDA, CPU] if CUDA in available else [CPU]


# ONNX Runtime's rewrites that change float32 rounding (the others only merge steps exactly)
ROUNDING_FUSIONS = ("ConvBNFusion", "ConvAddFusion", "ConvMulFusion", "NchwcTransformer")

_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_SPINNING = {  # session config entries
    "never": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"},
    "during runs": {"session.intra_op.allow_spinning": "1", "session.inter_op.allow_spinning": "1",
                    "session.force_spinning_stop": "1"},
    "always": {"session.intra_op.allow_spinning": "1", "session.inter_op.allow_spinning": "1"},
}


#: what ONNX Runtime raises: its own exception classes (not RuntimeError subclasses) and
#: RuntimeError from its Python layer
RUNTIME_ERRORS = (RuntimeError, *(
    cls for cls in vars(ort.capi.onnxruntime_pybind11_state).values()
    if isinstance(cls, type) and issubclass(cls, Exception)))
_REPORT = ("If the original model runs in ONNX Runtime as it is, onnx-cam's rewrite of it is "
           "at fault: please report it.")


def make_session(proto: onnx.ModelProto, options: RuntimeOptions) -> ort.InferenceSession:
    """A session for `proto`; an UnsupportedModelError when ONNX Runtime refuses it."""
    try:
        return _make_session(proto, options)
    except RUNTIME_ERRORS as exc:
        raise UnsupportedModelError(
            f"ONNX Runtime cannot load this model: {str(exc)[:500]}. {_REPORT}") from None


# Open counts of the inputs run (counting_inputs), added to from any thread.
_COUNTS: list[list[int]] = []
_COUNTS_LOCK = threading.Lock()


@contextmanager
def counting_inputs() -> Iterator[list[int]]:
    """Yields a one-item list holding how many inputs (batch rows) every session run was given
    while the block runs, in any thread: a forward run, a forward + gradient run and a run of
    part of the model (a head) count one per row."""
    count = [0]
    with _COUNTS_LOCK:
        _COUNTS.append(count)
    try:
        yield count
    finally:
        with _COUNTS_LOCK:
            _COUNTS[:] = [c for c in _COUNTS if c is not count]  # by identity


def run(session, outputs: list[str], feeds: dict):
    """session.run; an UnsupportedModelError when ONNX Runtime fails on the model."""
    if _COUNTS:
        rows = len(next(iter(feeds.values())))
        with _COUNTS_LOCK:
            for count in _COUNTS:
                count[0] += rows
    try:
        return session.run(outputs, feeds)
    except RUNTIME_ERRORS as exc:
        raise UnsupportedModelError(
            f"ONNX Runtime failed running this model: {str(exc)[:500]}. {_REPORT}") from None


def _make_session(proto: onnx.ModelProto, options: RuntimeOptions) -> ort.InferenceSession:
    providers = options.resolved_providers()
    if _blocked_layout(options, providers):
        proto = lift_1d(proto)
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[options.optimization]
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3
    for key, value in _SPINNING[options.spinning].items():
        so.add_session_config_entry(key, value)
    return ort.InferenceSession(
        proto.SerializeToString(), so, providers=providers,
        disabled_optimizers=list(ROUNDING_FUSIONS) if options.exact_routes else None)


def _blocked_layout(options: RuntimeOptions, providers: list) -> bool:
    """Whether ONNX Runtime will run convolutions in its blocked CPU layout (NCHWc), which is
    2D only, so 1D networks are worth lifting to height 1 (graph/lift_1d.py)."""
    return providers == [CPU] and options.optimization == "all" and not options.exact_routes
