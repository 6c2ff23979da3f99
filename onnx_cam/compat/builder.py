"""The framework-independent part of the SignalGrad-CAM facade: get_cam and the displays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import MethodError, UnsupportedModelError
from ..explainer import Explainer
from ..methods import get_method
from . import display
from .items import (
    Layout,
    as_list,
    group_by_shape,
    needs_unit_channel,
    prepare,
    to_numpy,
    with_unit_channel,
)
from .maps import METHODS, fit, output_shape, signed_maps, to_bytes
from .scores import ScoreRule, model_outputs


class CamBuilder:
    """SignalGrad-CAM 2.2's ``CamBuilder`` API, computed by onnx-cam.

    The framework model is converted to ONNX once per input shape (items of equal shape, or
    padded with ``padding_dim``, share one conversion) and every ``get_cam`` call explains
    each batch of equal-shape items with a single ONNX Runtime run, whatever the number of
    target classes, foils, layers and explainers. Conversions are shared by every builder
    of the same model (:mod:`.cache`, keyed by its weights' content and its architecture:
    a model changed between calls is converted again). Use :class:`TorchCamBuilder` or
    :class:`TfCamBuilder`; arguments as SignalGrad-CAM's (the README's "Migrating from
    SignalGrad-CAM" says what differs). ``seed`` is accepted and unused: nothing here is
    random, and no global random state or determinism flag is touched. ``extend_search`` is
    accepted and unused: any layer onnx-cam can explain may be named.
    """

    explainer_types = {"Grad-CAM": "Gradient-weighted Class Activation Mapping",
                       "HiResCAM": "High-Resolution Class Activation Mapping"}

    def __init__(self, model, transform_fn: Callable | None = None,
                 class_names: Sequence[str] | None = None, time_axs: int = 1,
                 input_transposed: bool = False, ignore_channel_dim: bool = False,
                 is_regression_network: bool = False, is_transformer_network: bool = False,
                 model_output_index: int | None = None, extend_search: bool = False,
                 padding_dim: int | None = None, seed: int = 11):
        self.model = model
        self.transform_fn = transform_fn
        self.class_names = list(class_names) if class_names is not None else None
        self.time_axs = time_axs
        self.input_transposed = input_transposed
        self.ignore_channel_dim = ignore_channel_dim
        self.is_regression_network = is_regression_network
        self.is_transformer_network = is_transformer_network
        self.model_output_index = model_output_index
        self.extend_search = extend_search
        self.padding_dim = padding_dim
        self.seed = seed

    # ---- what a framework builder provides -------------------------------------------
    def _layer_rank(self, layer: str) -> int:
        """The spatial rank (1, 2, 3) of a named layer's output."""
        raise NotImplementedError

    def _fingerprint(self) -> tuple:
        """The model's key (:mod:`.fingerprint`): its weights by content, its architecture."""
        raise NotImplementedError

    def _explainer(self, model_key: tuple, shape: tuple[int, ...], example: np.ndarray,
                   unit_channel: bool) -> Explainer:
        """The Explainer of the converted model for items of ``shape``, from the shared
        export cache under ``model_key`` (the model as it is now); ``unit_channel``: the
        batch carries a unit channel axis the model does not take."""
        raise NotImplementedError

    def _returned_probabilities(self, probs: np.ndarray):
        """A probabilities entry as SignalGrad-CAM returns it (numpy here)."""
        return probs

    def _core_layer(self, layer: str) -> str:
        """The name onnx-cam knows the layer by in the converted model."""
        return layer

    # ---- get_cam ----------------------------------------------------------------------
    def get_cam(self, data_list, data_labels, target_classes, explainer_types, target_layers,
                softmax_final: bool, avoid_relu: bool = False, data_names=None,
                contrastive_foils=None, quadratic_contrastive_score: bool = False,
                data_sampling_freq: float | None = None, dt: float = 10,
                channel_names: Sequence[str] | None = None, results_dir_path=None,
                aspect_factor: float = 100, data_shape_list=None,
                extra_preprocess_inputs_list=None, extra_inputs_dict=None,
                video_fps_list=None, show_single_video_frames: bool = False,
                time_names=None, axes_names=None, eps: float = 1e-6, *,
                cmap: str = "inferno"):
        """CAMs of each item for every explainer, target class, layer and contrastive foil.

        Returns SignalGrad-CAM's three dictionaries, keyed
        ``"<explainer>_<layer>_class<target>[_foil<foil>]"`` (:meth:`get_item_key`):

        - cams: per key, one map per item, scaled to 0..255 at the layer's resolution then
          resized to the item's size: 1D ``(T, 1)`` uint8, 2D ``(rows, columns)`` uint8, 3D
          ``(D, H, W)`` float32;
        - predicted probabilities: per key, the target class's probability per item ``(N,)``,
          or the target's and the foil's ``(N, 2)`` (a regression foil: its value), read as
          SignalGrad-CAM reads the output (one output: binary, ``sigmoid``); a ``tf.Tensor``
          from :class:`TfCamBuilder`, a numpy array from :class:`TorchCamBuilder`, as there;
        - score ranges: per key, ``(minima, maxima)``, each ``(N, 1)`` / ``(N, 1, 1)`` /
          ``(N, 1, 1, 1)``: the map's range before scaling.

        softmax_final=True differentiates ``log(clamp(p, eps, 1 - eps))`` of the model's
        Softmax / Sigmoid output, as SignalGrad-CAM does (exactly, through onnx-cam's
        ``score="log_probs"``: an item whose probability is clamped gets an all-zero map, as
        there); False differentiates the output itself. avoid_relu keeps the negative part.
        Figures are drawn only when ``results_dir_path`` is given (one file per item and
        key, in ``<results_dir_path>/<item name>/``); nothing is shown and no figure stays
        open. ``extra_inputs_dict`` is not supported (one model input); ``dt``,
        ``aspect_factor``, ``time_names`` and ``axes_names`` are accepted and unused (the
        figures lay out their own axes); ``cmap`` (keyword only) colours the figures.
        """
        if extra_inputs_dict:
            raise UnsupportedModelError(
                "extra_inputs_dict: the SignalGrad-CAM drop-in explains models with one input. "
                "Wrap the model so that its forward takes only the data (e.g. a module whose "
                "forward(x) returns model(x, **extra_inputs_dict)) and pass the wrapper, or use "
                "onnx_cam.Explainer, which takes several inputs (explain({'x': ..., ...})).")
        items = as_list(data_list)
        explainers = as_list(explainer_types)
        request = _Request(
            layers=as_list(target_layers), methods={e: _method_name(e) for e in explainers},
            targets=as_list(target_classes), foils=as_list(contrastive_foils),
            rank=self._rank(as_list(target_layers)), softmax_final=softmax_final, eps=eps,
            quadratic=quadratic_contrastive_score, avoid_relu=avoid_relu,
            data_shapes=(list(data_shape_list) if data_shape_list is not None
                         else [to_numpy(item).shape for item in items]))
        layout = Layout(request.rank, self.time_axs, self.padding_dim, self.ignore_channel_dim,
                        self.is_transformer_network)
        arrays = prepare(items, self.transform_fn, extra_preprocess_inputs_list, layout)
        tokens = _check_numeric(arrays)
        if tokens:  # (T,) token ids: the model takes (N, T), no channel axis
            arrays = [a[0] if a.ndim == 2 and len(a) == 1 else a for a in arrays]
        keys = request.keys(self.get_item_key)
        results = _Results.empty(keys.values(), len(items))
        model_key = self._fingerprint()  # once per call: the weights may change between calls
        for shape, members in group_by_shape(arrays).items():
            stacked = np.stack([arrays[i] for i in members])
            unit = not tokens and needs_unit_channel(shape, request.rank)
            batch = with_unit_channel(stacked, request.rank) if unit else stacked
            explainer = self._explainer(model_key, shape, batch, unit)
            self._explain_batch(explainer, batch, members, request, keys, results)
        cams, probs, ranges = results.dictionaries(request.rank)
        probs = {key: self._returned_probabilities(p) for key, p in probs.items()}
        if results_dir_path is not None:
            display.draw_get_cam(self, items, data_labels, data_names, cams, probs, ranges,
                                 keys, results_dir_path, data_sampling_freq, channel_names,
                                 video_fps_list, show_single_video_frames, cmap)
        return cams, probs, ranges

    def _explain_batch(self, explainer: Explainer, batch: np.ndarray, members: list[int],
                       request: _Request, keys: dict, results: _Results) -> None:
        """One ONNX Runtime pass for a batch of equal-shape items (``members`` of the call's
        items): the gradient of every model output a score needs, then every map."""
        rule = ScoreRule.of(explainer.num_classes, explainer.head, self.is_regression_network,
                            request.softmax_final, request.eps, request.quadratic)
        for t, f in request.settings:
            rule.check(t, f)
        needed = sorted({r for t, f in request.settings for r in rule.rows(t, f)})
        core_layers = [self._core_layer(layer) for layer in request.layers]
        logits, per_layer = explainer.activations_and_gradients(
            batch, targets=[needed] * len(members), layers=core_layers, score=rule.core_score)
        outputs = model_outputs(logits[::len(needed)], explainer.head)  # rows: item-major
        for t, f in request.settings:
            p = rule.probabilities(outputs, t, f)
            for key in {keys[e, layer, t, f] for e in request.methods for layer in request.layers}:
                results.put_probs(key, members, p)
        for layer, core in zip(request.layers, core_layers):
            acts, grads = per_layer[core]
            for explainer_type, method in request.methods.items():
                parts = signed_maps(method, acts, grads)
                parts = parts.reshape(len(members), len(needed), *parts.shape[1:])
                for t, f in request.settings:
                    columns = [needed.index(r) for r in rule.rows(t, f)]
                    coef = rule.coefficients(outputs, t, f).astype(np.float32)
                    raw = np.einsum("nj,nj...->n...", coef, parts[:, columns])
                    if not request.avoid_relu:
                        raw = np.maximum(raw, 0)
                    byte_maps, low, high = to_bytes(raw)
                    key = keys[explainer_type, layer, t, f]
                    results.put_range(key, members, low, high)
                    self._fit_into(results.cams[key], members, byte_maps, request.data_shapes,
                                   request.rank)

    def _rank(self, layers: Sequence[str]) -> int:
        ranks = {self._layer_rank(layer) for layer in layers}
        if len(ranks) != 1:
            raise UnsupportedModelError(f"target_layers {list(layers)} mix 1D, 2D and 3D "
                                        "layers; explain them in separate get_cam calls.")
        return ranks.pop()

    def _fit_into(self, out: list, members: list[int], byte_maps: np.ndarray,
                  data_shapes: Sequence[tuple[int, ...]], rank: int) -> None:
        """Resize each item's 0..255 map to SignalGrad-CAM's size for it; items sharing a size
        are resized together."""
        sizes: dict[tuple, list[int]] = {}
        for j, i in enumerate(members):
            sizes.setdefault(self._size(data_shapes[i], rank), []).append(j)
        for (size, transposed, crop), rows in sizes.items():
            for j, cam in zip(rows, fit(byte_maps[rows], size, transposed, crop)):
                out[members[j]] = cam

    def _size(self, data_shape: tuple[int, ...], rank: int):
        """(size to resize to, transposed, crop): padded items are resized to their padded
        size and cropped to their own."""
        size, transposed = output_shape(rank, tuple(data_shape), self.time_axs,
                                        self.input_transposed)
        if self.padding_dim is None:
            return size, transposed, None
        padded = list(data_shape)
        padded[self.time_axs] = self.padding_dim
        padded_size, _ = output_shape(rank, tuple(padded), self.time_axs, self.input_transposed)
        return padded_size, transposed, size

    @staticmethod
    def get_item_key(explainer_type: str, target_layer: str, target_class: int,
                     contrastive_foil=None) -> str:
        """The key of one setting in get_cam's dictionaries, as SignalGrad-CAM builds it."""
        key = f"{explainer_type}_{target_layer}_class{target_class}"
        return key if contrastive_foil is None else f"{key}_foil{contrastive_foil}"

    # ---- displays ---------------------------------------------------------------------
    def single_channel_output_display(self, data_list, data_labels, predicted_probs_dict,
                                      cams_dict, explainer_types, target_classes,
                                      target_layers, target_item_ids=None,
                                      desired_channels=None, data_names=None,
                                      contrastive_foils=None, grid_instructions=None,
                                      bar_ranges_dict=None, results_dir_path=None,
                                      data_sampling_freq=None, dt: float = 10,
                                      channel_names=None, video_fps_list=None,
                                      video_channel_idx: int = -1,
                                      show_single_video_frames: bool = False, time_names=None,
                                      axes_names=None, fig_size=None, line_width: float = 0.1,
                                      marker_width: float = 30, alpha: float = 0.3, *,
                                      cmap: str = "inferno") -> list:
        """Each selected channel of each item as a line coloured by its CAM (1D and 2D
        layers; ``onnx_cam.viz.signal_figure``), or, for 3D layers, each channel of each video /
        volume with its CAM overlaid (a GIF per channel under ``results_dir_path``, else a
        montage figure). Returns the figures (and GIF paths) made; saved under
        ``results_dir_path`` when given."""
        return display.single_channel(self, **_display_args(locals()))

    def overlapped_output_display(self, data_list, data_labels, predicted_probs_dict,
                                  cams_dict, explainer_types, target_classes, target_layers,
                                  target_item_ids=None, data_names=None,
                                  contrastive_foils=None, grid_instructions=None,
                                  bar_ranges_dict=None, results_dir_path=None,
                                  data_sampling_freq=None, dt: float = 10, channel_names=None,
                                  video_fps_list=None, show_single_video_frames: bool = False,
                                  time_names=None, axes_names=None, fig_size=None,
                                  alpha: float = 0.3, *, cmap: str = "inferno") -> list:
        """The CAMs blended over the inputs: images, multichannel signals shown as images,
        spectra (``onnx_cam.viz.overlay_figure``, one figure for all items of a shape), and
        videos / volumes (a GIF per item, optionally a PNG per frame). Returns the figures
        (and GIF paths) made; saved under ``results_dir_path`` when given."""
        return display.overlapped(self, **_display_args(locals()))

    def text_output_display(self, token_data_list, data_labels, predicted_probs_dict,
                            cams_dict, explainer_types, target_classes, target_layers,
                            target_item_ids=None, data_names=None, contrastive_foils=None,
                            grid_instructions=None, bar_ranges_dict=None,
                            results_dir_path=None, axes_names=None, fig_size=None, *,
                            cmap: str = "inferno") -> list:
        """Each token coloured by its importance, with importance bars
        (``onnx_cam.viz.token_figure``, one figure per item). Returns the figures; saved under
        ``results_dir_path`` when given."""
        return display.tokens(self, **_display_args(locals()))


@dataclass(frozen=True)
class _Request:
    """What one get_cam call asks for."""

    layers: list[str]
    methods: dict[str, str]           # explainer type as given -> onnx-cam method name
    targets: list
    foils: list                       # classes, values (regression) or None
    rank: int
    softmax_final: bool
    eps: float
    quadratic: bool
    avoid_relu: bool
    data_shapes: list[tuple[int, ...]]

    @property
    def settings(self) -> list[tuple]:
        """Every (target, foil) pair."""
        return [(t, f) for t in self.targets for f in self.foils]

    def keys(self, item_key) -> dict[tuple, str]:
        """(explainer, layer, target, foil) -> dictionary key, in SignalGrad-CAM's order
        (explainer, class, layer, foil)."""
        return {(e, layer, t, f): item_key(e, layer, t, f) for e in self.methods
                for t in self.targets for layer in self.layers for f in self.foils}


@dataclass
class _Results:
    """get_cam's three dictionaries, filled one batch of items at a time."""

    cams: dict[str, list]
    probs: dict[str, np.ndarray | None]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]

    @classmethod
    def empty(cls, keys, n: int) -> _Results:
        keys = list(keys)
        return cls({k: [None] * n for k in keys}, dict.fromkeys(keys),
                   {k: np.empty(n, np.float32) for k in keys},
                   {k: np.empty(n, np.float32) for k in keys})

    def put_probs(self, key: str, members: list[int], values: np.ndarray) -> None:
        if self.probs[key] is None:
            n = len(self.cams[key])
            self.probs[key] = np.empty((n, *values.shape[1:]), np.float32)
        self.probs[key][members] = values

    def put_range(self, key: str, members: list[int], low, high) -> None:
        self.low[key][members] = low
        self.high[key][members] = high

    def dictionaries(self, rank: int) -> tuple[dict, dict, dict]:
        """cams, probabilities, and (minima, maxima) shaped (N, 1, ...) with ``rank`` ones."""
        ones = (1,) * rank
        ranges = {k: (self.low[k].reshape(-1, *ones), self.high[k].reshape(-1, *ones))
                  for k in self.cams}
        return self.cams, self.probs, ranges


def _method_name(explainer_type: str) -> str:
    try:
        name = get_method(explainer_type).name
    except MethodError:
        name = None
    if name not in METHODS:
        raise MethodError(f"explainer_types {explainer_type!r}: SignalGrad-CAM's explainers are "
                          f"{list(METHODS.values())}. For the other methods onnx-cam offers, "
                          "use onnx_cam.Explainer.")
    return name


def _check_numeric(arrays: Sequence[np.ndarray]) -> bool:
    """Whether the items are integer token ids (float items: False); refuses the rest."""
    kinds = {a.dtype.kind for a in arrays}
    if kinds <= set("iu"):
        return True
    if kinds & set("iub"):
        raise UnsupportedModelError(
            "The inputs mix integers and floats, or are booleans: give token ids as integers "
            "for every item, or float arrays for every item.")
    if not kinds <= set("f"):
        raise UnsupportedModelError(f"Inputs of dtype {sorted(kinds)} cannot be explained: "
                                    "transform_fn should return float arrays or tensors.")
    return False


def _display_args(arguments: dict) -> dict:
    return {k: v for k, v in arguments.items() if k != "self"}
