"""What a framework model computes, as a hashable key: its weights' content and architecture.

Two models with equal keys export to the same ONNX graph, so a cached export may serve both;
a changed weight, buffer, hyperparameter or class gives a new key. Tensors and arrays count
by content (a SHA-256 digest of their bytes, with dtype and shape); numbers, strings and
containers of them by value; classes, functions and any other object by identity (the key
holds the object, so an identity is never reused while the key lives). An object of the
last kind mutated in place keeps its key: such attributes are outside what the key sees.
"""

from __future__ import annotations

import hashlib
import sys
import types

import numpy as np

_VALUES = (type(None), bool, int, float, complex, str, bytes)


class _Same:
    """An object compared by identity (hashable even when the object is not)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


class _Walker:
    """Turns attribute values into hashable keys; tensors by content, each hashed once."""

    def __init__(self, module_names: dict[int, str] | None = None):
        self.module_names = module_names or {}
        self.digests: dict[int, tuple] = {}  # id -> (the value, its key)
        self.open_containers: set[int] = set()

    def key(self, value):
        if isinstance(value, _VALUES):
            return value
        ident = id(value)
        if ident in self.module_names:  # a submodule: its own entry holds its content
            return ("module", self.module_names[ident])
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            if value.is_quantized or value.layout != torch.strided:
                return _Same(value)
            return self._digest(value, lambda: _torch_bytes(value), str(value.dtype),
                                tuple(value.shape))
        if torch is not None and isinstance(value, (torch.dtype, torch.device)):
            return str(value)
        if isinstance(value, np.ndarray) and not value.dtype.hasobject:
            return self._digest(value, lambda: np.ascontiguousarray(value).view(np.uint8),
                                value.dtype.str, value.shape)
        if isinstance(value, (tuple, list, dict, set, frozenset)):
            if ident in self.open_containers:  # a container holding itself
                return _Same(value)
            self.open_containers.add(ident)
            try:
                return self._container(value)
            finally:
                self.open_containers.discard(ident)
        if isinstance(value, types.MethodType):
            return ("method", _Same(value.__func__), self.key(value.__self__))
        return _Same(value)

    def _container(self, value) -> tuple:
        if isinstance(value, dict):
            return ("dict", *((self.key(k), self.key(v)) for k, v in value.items()))
        if isinstance(value, (set, frozenset)):
            return ("set", frozenset(self.key(v) for v in value))
        return (type(value).__name__, *(self.key(v) for v in value))

    def _digest(self, value, as_bytes, dtype: str, shape: tuple) -> tuple:
        # the memo holds the value too: a freed temporary's id can be reused by the next
        # array (np.asarray of each Keras weight), which must not get its digest
        held = self.digests.get(id(value))
        if held is None or held[0] is not value:
            digest = hashlib.sha256(as_bytes()).hexdigest()
            held = self.digests[id(value)] = (value, ("tensor", dtype, shape, digest))
        return held[1]


def _torch_bytes(tensor) -> np.ndarray:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(sys.modules["torch"].uint8).numpy()


def torch_fingerprint(model) -> tuple:
    """The key of a torch module: per submodule its class and every attribute (parameters,
    buffers, hyperparameters, hooks, the training flag), tensors by content."""
    modules = list(model.named_modules(remove_duplicate=True))
    walker = _Walker({id(m): name for name, m in modules})
    entries = []
    for name, module in modules:
        attributes = tuple((k, walker.key(v)) for k, v in vars(module).items())
        entries.append((name, _Same(type(module)), attributes))
    return ("torch", *entries)


def keras_fingerprint(model) -> tuple:
    """The key of a Keras model: its JSON architecture (by identity when it has none), the
    class of every layer, and every weight by content."""
    try:
        architecture = model.to_json()
    except (NotImplementedError, TypeError, ValueError, AttributeError):
        architecture = _Same(model)
    walker = _Walker()
    weights = tuple((getattr(w, "path", w.name), walker.key(np.asarray(w)))
                    for w in model.weights)
    return ("keras", architecture, _layer_classes(model), weights)


def _layer_classes(layer) -> tuple:
    return (_Same(type(layer)), *(_layer_classes(sub) for sub in getattr(layer, "layers", ())))
