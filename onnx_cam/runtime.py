"""ONNX Runtime sessions: provider choice and thread settings."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are made. `providers=None` picks CUDA when onnxruntime-gpu offers it."""

    providers: tuple | None = None
    intra_op_threads: int = 0       # 0: ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 0
    optimization: str = "all"       # "all", "extended", "basic" or "none"
    # Idle ONNX Runtime threads spin by default, stealing the cores the CAM kernels use right
    # after each run; off unless asked for.
    spinning: bool = False

    def resolved_providers(self) -> list:
        if self.providers is not None:
            return list(self.providers)
        available = ort.get_available_providers()
        return [CUDA, CPU] if CUDA in available else [CPU]


_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def make_session(proto: onnx.ModelProto, options: RuntimeOptions) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[options.optimization]
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3
    spin = "1" if options.spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return ort.InferenceSession(proto.SerializeToString(), so,
                                providers=options.resolved_providers())
