"""The shared base of CAM methods and the registry that finds them by name."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import MethodError

METHODS: dict[str, type[CamMethod]] = {}


class CamMethod:
    """Turns a layer's activations and score gradients into raw CAMs (N, *layer_spatial)."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()

    def raw(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for key in (cls.name, *cls.aliases):
            METHODS[_key(key)] = cls


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def get_method(name: str) -> CamMethod:
    cls = METHODS.get(_key(name))
    if cls is None:
        known = sorted({c.name for c in METHODS.values()})
        raise MethodError(f"Unknown CAM method {name!r}. Available methods: {', '.join(known)}.")
    return cls()
