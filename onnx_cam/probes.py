"""Extra forward passes for perturbation methods, batched through ONNX Runtime."""

from __future__ import annotations

import copy

import numpy as np

from .concurrency import OnceCache
from .errors import TargetError, UnsupportedModelError
from .graph.cut import SubModel, head_model, score_model
from .model import Model
from .runtime import RuntimeOptions, make_session, run
from .side_inputs import SideInputs, side_feeds


class Probe:
    """Scores (seed . logits) of modified inputs, or of modified activations of one layer."""

    def __init__(self, model: Model, runtime: RuntimeOptions, spatial_shape: tuple[int, ...],
                 batch_size: int, sessions: OnceCache | None = None):
        """sessions: shared by probes of the same model, runtime and spatial shape that differ
        in batch size only (each session is built once, even across threads)."""
        self._model, self._runtime, self._spatial = model, runtime, spatial_shape
        self.batch_size = batch_size
        self._sessions = sessions if sessions is not None else OnceCache()
        self.side: SideInputs | None = None  # the items' inputs fed as given (several inputs)

    def bound(self, side: SideInputs | None) -> Probe:
        """This probe feeding `side` (one item's, or one per input scored) beside the inputs
        it scores; the same sessions."""
        probe = copy.copy(self)
        probe.side = side
        return probe

    def _session(self, layer: str | tuple | None) -> tuple[SubModel, object]:
        def build():
            if isinstance(layer, tuple):  # ("tensor", name): the model up to that tensor
                sub = score_model(self._model, self._spatial, layer[1])
            elif layer is None:
                sub = score_model(self._model, self._spatial)
            else:
                sub = head_model(self._model, layer, self._spatial)
            return sub, make_session(sub.proto, self._runtime)
        return self._sessions.get(layer, build)

    def _outputs(self, key, feeds: list[np.ndarray]) -> np.ndarray:
        """The output of the sub-model `key` (see _session) for `feeds`, run in batches, with
        the side inputs fed beside them."""
        sub, session = self._session(key)
        count = len(feeds[0])
        parts = []
        for start in range(0, count, self.batch_size):
            chunk = {name: _as_feed(f[start:start + self.batch_size])
                     for name, f in zip(sub.input_names, feeds)}
            chunk.update(side_feeds(self._model, self.side, count, start,
                                    min(count, start + self.batch_size)))
            parts.append(run(session, [sub.score_name], chunk)[0])
        return np.concatenate(parts)

    def _logits(self, layer: str | None, feeds: list[np.ndarray]) -> np.ndarray:
        """(m, K) logits of the sub-model ending at the score."""
        return self._outputs(layer, feeds).reshape(len(feeds[0]), -1)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """The model's logits (N, K) for `inputs`, forward only."""
        return self._logits(None, [inputs])

    def tensor(self, name: str, inputs: np.ndarray) -> np.ndarray:
        """The values of tensor `name` of the graph for `inputs`, forward only, (N, ...)."""
        if name not in self._model.graph(self._spatial).tensors():
            raise TargetError(f"The model has no tensor {name!r}; name one of its outputs.")
        return self._outputs(("tensor", name), [inputs])

    def input_scores(self, inputs: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """seed . logits for each of `inputs` (m, C_in, *spatial) -> (m,)."""
        return self._logits(None, [inputs]) @ seed

    def head_scores(self, layer: str, activations: np.ndarray, item_input: np.ndarray,
                    seed: np.ndarray, as_fed: bool = False) -> np.ndarray:
        """seed . logits with `layer`'s activations replaced, (m, C, *s) -> (m,)."""
        return self.head_logits(layer, activations, item_input, as_fed) @ seed

    def head_logits(self, layer: str, activations: np.ndarray,
                    item_input: np.ndarray | None = None, as_fed: bool = False) -> np.ndarray:
        """The logits (m, K) of the head above `layer` run on `activations` (m, C, *s), or
        with `as_fed` on activations in the layout of `head_feed`.

        `item_input` is the one input item whose activations were modified; it is repeated
        when the head also reads the model input (a skip connection around the layer), and
        without it such a head is refused.
        """
        tokens = self._model.token_views.get(layer)
        if tokens is not None and not as_fed:
            raise UnsupportedModelError(
                f"Layer {layer!r} holds tokens read as a {tokens.grid} patch grid after "
                f"{tokens.prefix} prefix token(s) (class, distillation or register tokens). "
                "factorize() scores feed the head above the layer a grid of concepts alone, "
                "which leaves the prefix tokens undefined: use factorize(..., scores=False) "
                "on this layer, or a Swin-style (N, H, W, C) layer.")
        sub, _ = self._session(layer)
        feeds = [activations]
        if self._model.input_name in sub.input_names:
            if item_input is None:
                raise UnsupportedModelError(
                    f"The head above layer {layer!r} also reads the model input (a skip "
                    "connection around the layer), so it cannot score activations alone; "
                    "choose a layer no skip connection bypasses.")
            feeds.append(np.broadcast_to(item_input, (len(activations), *item_input.shape)))
        return self._logits(layer, feeds)

    def head_feed(self, layer: str, activations: np.ndarray,
                  item_input: np.ndarray) -> tuple[np.ndarray, int]:
        """One item's values of `layer` in the layout the head above it is fed, and their
        channel axis: its (C, *s) `activations` as given, or for a token layer the tensor
        (T, C) as it is, prefix tokens included, computed again from `item_input`."""
        tokens = self._model.token_views.get(layer)
        if tokens is None:
            return activations, 0
        values = self._outputs(("tensor", layer), [item_input[None]])[0]
        return values, tokens.roles.index(1) - 1  # the batch is first (head_model)

    def head_feed_masks(self, layer: str, masks: np.ndarray) -> np.ndarray:
        """Masks (m, *s) of positions of `layer` as masks of the head's feed (head_feed):
        broadcast over the channels, and for a token layer with its prefix tokens kept."""
        tokens = self._model.token_views.get(layer)
        return masks[:, None] if tokens is None else tokens.token_masks(masks)


def _as_feed(values: np.ndarray) -> np.ndarray:
    """Floats as float32; integer token ids as given (already in the model's dtype)."""
    return np.ascontiguousarray(values, None if values.dtype.kind in "iu" else np.float32)
