"""Export a ``torch.nn.Module`` to ONNX together with a module-name -> tensor-name map.

The model is exported with the legacy TorchScript exporter (``dynamo=False``) and *without*
constant folding, so every module keeps its own output tensor (with folding, BatchNorm is
merged into the preceding Conv and the tensor named after ``conv1`` is really BN's output).

The map is stored in ``metadata_props["onnx_cam.layer_map"]`` as a JSON object
``{qualname: tensor_name}``, the qualnames being those of ``module.named_modules()``
(``""`` is the root module and maps to the first graph output).

How a module's tensor is found
------------------------------
The exporter names every node after the scope path of the module call that emitted it, e.g.
``/layer1/layer1.0/relu_1/Relu``. Each component is the module's qualname from its last
non-numeric atom (``conv1``, ``layer1.0``, ``downsample.1``), plus ``_k`` when the same path
was already used (the k-th further call). :func:`_resolve_scope` walks these components down
the real module tree; the ``_k`` suffix sits on the innermost component only, so calls of an
enclosing module cannot be told apart by name. Hence:

* **Repeated calls**: a module maps to the output of its LAST call. It is taken as the output
  of the last graph node (graph order = execution order) emitted inside any of its calls,
  nested sub-modules included.
* **Checked against eager**: the module is run once eagerly with forward hooks; a tensor is
  recorded only if its ONNX shape agrees with the real output's shape.
* **Tuple outputs**: the map holds the tensor of the FIRST element; it is recorded only when
  exactly one tensor leaving the module has that element's shape, otherwise left out.
* **Modules without nodes** (Dropout / Identity in eval, ``contiguous()``...): mapped only when
  the eager run shows the module returned, unchanged (same object, same version counter), a
  tensor that already has a name: the graph input or the last-call output of a mapped module.
  Otherwise (and for modules whose scope name is ambiguous) the module is left out of the map.
* **Checked by value**: finally the exported model runs in ONNX Runtime on the example input
  with every mapped tensor as an output, and each must equal (relative L2 difference below
  1e-3; 1e-2 for 16-bit floats) the module's last-call output as a forward hook saw it when
  the module returned (before any later in-place op). A name that fails (a module whose last
  node is not its output, a BatchNorm folded into its Conv by an exporter) is left out of the
  map and recorded under ``onnx_cam.unverified_layers`` with the kept module to use instead:
  one holding the same values if any, else the nearest in execution order (the later on a
  tie); ``LayerError`` names it when the dropped name is asked for.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from typing import Any

import numpy as np
import onnx

from .metadata import CHANNELS_FIRST, UNVERIFIED_KEY, annotate

_CALL_SUFFIX = re.compile(r"(.+)_(\d+)")


def export_torch(
    module: Any,
    example_input: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    opset: int = 17,
    input_name: str = "input",
    output_name: str = "output",
    class_names: list[str] | None = None,
) -> onnx.ModelProto:
    """Export ``module`` to ONNX with a dynamic batch axis and a module -> tensor map.

    Args:
        module: a ``torch.nn.Module``; exported in eval mode, training flags restored afterwards.
        example_input: one batch-first input, a ``torch.Tensor`` or a numpy array; for a
            model with several inputs, a tuple of them in ``forward``'s order (graph inputs
            named after ``forward``'s parameters) or a dict keyed by those parameter names.
        path: if given, the model is also saved there (single file).
        opset: ONNX opset, at least 17.
        input_name: name of the graph input (one input).
        output_name: name of the first graph output; further outputs get ``_1``, ``_2``...;
            a model returning a dict of tensors names its outputs by the dict's keys.
        class_names: if given, stored with the model so explainers name its classes.

    Returns:
        The ``onnx.ModelProto`` with ``onnx_cam.*`` entries in ``metadata_props``.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            f"export_torch needs a torch.nn.Module, got {type(module).__name__}; "
            "pass the model object itself."
        )
    if opset < 17:
        raise ValueError(f"opset {opset} is too old; use opset=17 or newer.")
    xs = _as_inputs(example_input, module, input_name)

    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        events, values, n_outputs, keys = _eager_calls(module, xs)
        outputs = keys or [output_name] + [f"{output_name}_{i}" for i in range(1, n_outputs)]
        model = _export(module, xs, opset, outputs)
    finally:
        for m, training in flags:
            m.training = training

    names = {id(m): q for q, m in module.named_modules()}
    calls: dict[str, int] = {}
    for q, _, _ in events:
        calls[q] = calls.get(q, 0) + 1
    owned, ambiguous = _node_owners(model.graph, module, names, calls)
    owned = {
        q: idx for q, idx in owned.items()
        if not any(q == a or q.startswith(a + ".") for a in ambiguous)
    }
    layer_map = _call_outputs(model, owned, events, list(xs))
    layer_map, unverified = _checked_by_value(model, layer_map, values, xs, events)
    layer_map[""] = model.graph.output[0].name

    return annotate(model, source="torch", layout=CHANNELS_FIRST, layer_map=layer_map,
                    class_names=class_names, path=path,
                    extra={"onnx_cam.torch_version": str(torch.__version__),
                           UNVERIFIED_KEY: json.dumps(unverified, sort_keys=True)})


def _as_inputs(example_input: Any, module: Any, input_name: str) -> dict[str, Any]:
    """The example input(s) as torch tensors by graph input name: one tensor is named
    ``input_name``; a tuple / list or dict gives one input per ``forward`` parameter."""
    import inspect

    if not isinstance(example_input, (tuple, list, dict)):
        return {input_name: _as_tensor(example_input, module)}
    params = [p.name for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(example_input, dict):
        if list(example_input) != params[:len(example_input)]:
            order = [k for k in params if k in example_input]
            if sorted(order) != sorted(example_input) or order != params[:len(order)]:
                raise ValueError(
                    f"example_input's keys {list(example_input)} must be the first parameters "
                    f"of {type(module).__name__}.forward {params}; or pass a tuple in that "
                    "order.")
            example_input = {k: example_input[k] for k in order}
        return {k: _as_tensor(v, module) for k, v in example_input.items()}
    if len(params) < len(example_input):
        raise ValueError(f"example_input holds {len(example_input)} inputs but "
                         f"{type(module).__name__}.forward takes {params}.")
    return {name: _as_tensor(v, module) for name, v in zip(params, example_input)}


def _as_tensor(example_input: Any, module: Any) -> Any:
    """Return ``example_input`` as a torch tensor (numpy floats get the model's float dtype)."""
    import torch

    if isinstance(example_input, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(example_input))
        if x.is_floating_point():
            floats = [p.dtype for p in module.parameters() if p.is_floating_point()]
            x = x.to(floats[0] if floats else torch.float32)
    elif isinstance(example_input, torch.Tensor):
        x = example_input
    else:
        raise ValueError(
            f"example_input must be a torch.Tensor or numpy array, got "
            f"{type(example_input).__name__}; pass one batch-first input, e.g. "
            "torch.randn(1, C, H, W)."
        )
    if x.ndim < 2:
        raise ValueError(
            f"example_input has shape {tuple(x.shape)}; it must be batch-first with at least "
            "2 dimensions (N, C, ...). Add a batch axis, e.g. x[None]."
        )
    return x


def _tensors(obj: Any) -> list[Any]:
    """The tensors in a (nested) tuple / list / dict output, in order."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _eager_calls(
    module: Any, xs: dict[str, Any]
) -> tuple[list[tuple[str, list[Any], int]], dict[str, Any], int, list[str] | None]:
    """Run ``module`` once; return its module calls in completion order (each input first, as
    an ``<input>`` call), the value of each module's last-call first output as it returned
    it, the model's output count, and its output names when it returns a dict of tensors.

    Each call is ``(qualname, output tensors, version counter of the first one)``; the tensors
    are kept alive so that object identity stays meaningful. The values are copies taken in
    the hook, so a later in-place op (``ReLU(inplace=True)``) does not change them.
    """
    import torch

    events: list[tuple[str, list[Any], int]] = []
    values: dict[str, Any] = {}

    def hook(qualname: str):
        def record(_mod: Any, _inp: Any, out: Any) -> None:
            tensors = _tensors(out)
            events.append((qualname, tensors, tensors[0]._version if tensors else -1))
            if tensors:
                values[qualname] = tensors[0].detach().clone()
        return record

    xs = {name: x.clone() for name, x in xs.items()}
    for x in xs.values():
        events.append(("<input>", [x], x._version))
    handles = [m.register_forward_hook(hook(q)) for q, m in module.named_modules()]
    try:
        with torch.no_grad():
            out = module(*xs.values())
    except Exception as err:
        shapes = [tuple(x.shape) for x in xs.values()]
        raise RuntimeError(
            f"running {type(module).__name__} on example_input {shapes} failed: {err}. "
            "Check that example_input has the shape and dtype the model expects."
        ) from err
    finally:
        for h in handles:
            h.remove()
    n_outputs = len(_tensors(out))
    if n_outputs == 0:
        raise RuntimeError(
            f"{type(module).__name__} returned no tensor; only models whose output is a tensor "
            "or a tuple/list/dict of tensors can be exported."
        )
    keys = None
    if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
        keys = [str(k) for k in out]
    return events, values, n_outputs, keys


def _export(module: Any, xs: dict[str, Any], opset: int, outputs: list[str]) -> onnx.ModelProto:
    """Run the legacy TorchScript exporter into memory, batch axis dynamic everywhere."""
    import torch

    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed")
            torch.onnx.export(
                module, tuple(xs.values()), buf, dynamo=False, do_constant_folding=False,
                opset_version=opset, input_names=list(xs), output_names=outputs,
                dynamic_axes={name: {0: "N"} for name in [*xs, *outputs]},
            )
    except Exception as err:
        raise RuntimeError(
            f"torch.onnx.export (TorchScript exporter, opset {opset}) failed for "
            f"{type(module).__name__}: {err}. Make the forward traceable (no data-dependent "
            "Python control flow, only tensor inputs/outputs) or try another opset."
        ) from err
    return onnx.load_from_string(buf.getvalue())


def _exporter_name(qualname: str) -> str:
    """The scope component the exporter uses for a module: qualname from its last word atom."""
    atoms = qualname.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualname


def _resolve_scope(
    components: list[str],
    root: Any,
    names: dict[int, str],
    calls: dict[str, int],
    everything: list[tuple[str, Any]],
) -> tuple[list[str], set[str]]:
    """Walk scope components down the module tree from ``root``.

    A component names a child of the current module by the child's exporter name or local
    attribute name, exactly or with a ``_<digits>`` call suffix stripped (exact wins). If no
    child matches, a unique module of ``everything`` (``(exporter name, module)`` of the whole
    tree) is accepted: a module called from outside its parent. The walk stops at the first
    component that does not resolve to exactly one module.

    Returns the qualnames of the modules passed, outermost first, and the qualnames made
    ambiguous (``conv_1`` could be the child ``conv_1`` or the second call of ``conv``).
    """
    path: list[str] = []
    current = root
    for comp in components:
        children = [
            (key, m) for local, m in current.named_children()
            for key in (local, _exporter_name(names[id(m)]))
        ]
        suffixed = _CALL_SUFFIX.fullmatch(comp)
        base = suffixed.group(1) if suffixed else None
        found = None
        for pool in (children, everything):
            exact = {id(m): m for key, m in pool if key == comp}
            stripped = {id(m): m for key, m in pool if key == base and id(m) not in exact}
            if exact and any(calls.get(names[i], 0) > 1 for i in stripped):
                return path, {names[i] for i in [*exact, *stripped]}
            cands = exact or stripped
            if len(cands) == 1:
                found = next(iter(cands.values()))
            if cands:
                break
        if found is None:
            break
        path.append(names[id(found)])
        current = found
    return path, set()


def _node_owners(
    graph: onnx.GraphProto, root: Any, names: dict[int, str], calls: dict[str, int]
) -> tuple[dict[str, list[int]], set[str]]:
    """For each module qualname, the indices of the top-level nodes emitted inside its calls."""
    owned: dict[str, list[int]] = {}
    ambiguous: set[str] = set()
    everything = [(_exporter_name(q), m) for q, m in root.named_modules() if q]
    for i, node in enumerate(graph.node):
        if not node.name.startswith("/"):
            continue  # unscoped helper nodes, e.g. Identity aliases of shared initializers
        # "/layer1/layer1.0/conv1/Conv": before the first "/" is the root, the last part the op
        path, amb = _resolve_scope(
            node.name.split("/")[1:-1], root, names, calls, everything
        )
        ambiguous |= amb
        for q in path:
            owned.setdefault(q, []).append(i)
    return owned, ambiguous


def _shape_ok(dims: list[int | None] | None, shape: tuple[int, ...]) -> bool:
    """ONNX dims (None = unknown) agree with an eager shape; unknown rank agrees with anything."""
    if dims is None:
        return True
    if len(dims) != len(shape):
        return False
    return all(d is None or d == s for d, s in zip(dims, shape, strict=True))


def _runtime_shapes(model: onnx.ModelProto) -> onnx.GraphProto:
    """The graph with inferred shapes, ceil_mode pools sized as ONNX Runtime (and torch) size
    them rather than as ONNX shape inference does before opset 22."""
    import onnx_graphsurgeon as gs

    from onnx_cam.errors import OnnxCamError
    from onnx_cam.model import ceil_pools_to_floor  # here: onnx_cam imports this package

    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    try:
        ceil_pools_to_floor(graph)
    except OnnxCamError:  # a pool onnx-cam cannot rewrite: keep inference's sizes
        return onnx.shape_inference.infer_shapes(model).graph
    fixed = gs.export_onnx(graph, do_type_check=False)
    del fixed.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(fixed).graph


def _call_outputs(
    model: onnx.ModelProto,
    owned: dict[str, list[int]],
    events: list[tuple[str, list[Any], int]],
    input_names: list[str],
) -> dict[str, str]:
    """Map each module to its last call's output tensor (see the module docstring)."""
    graph = model.graph
    inferred = _runtime_shapes(model)
    shapes: dict[str, list[int | None] | None] = {}
    for vi in [*inferred.value_info, *inferred.output]:
        if vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    consumers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            consumers.setdefault(t, set()).add(i)
    for out in graph.output:
        consumers.setdefault(out.name, set()).add(-1)

    last = {q: k for k, (q, _, _) in enumerate(events)}
    layer_map: dict[str, str] = {}
    for q, idx in owned.items():
        if q not in last:
            continue
        tensors = events[last[q]][1]
        if not tensors:
            continue
        if len(tensors) == 1:  # the used outputs of the module's last node
            cands = [t for t in graph.node[idx[-1]].output if t and consumers.get(t)]
        else:  # every tensor leaving the module, searched for the first element's shape
            inside = set(idx)
            cands = [
                t for i in idx for t in graph.node[i].output
                if t and consumers.get(t, set()) - inside
            ]
        cands = [t for t in cands if _shape_ok(shapes.get(t), tuple(tensors[0].shape))]
        if len(cands) == 1:
            layer_map[q] = cands[0]

    # modules without nodes: pass-through of an already named, unmodified tensor
    known: dict[int, tuple[int, str | None]] = {}
    graph_inputs = iter(input_names)
    for k, (q, tensors, version) in enumerate(events):
        if not tensors:
            continue
        if q == "<input>":
            known[id(tensors[0])] = (version, next(graph_inputs))
        elif q in owned:
            known[id(tensors[0])] = (version, layer_map.get(q) if k == last[q] else None)
        elif k == last[q] and len(tensors) == 1:
            seen_version, name = known.get(id(tensors[0]), (-1, None))
            if name is not None and seen_version == version:
                layer_map[q] = name
    return layer_map


def _checked_by_value(
    model: onnx.ModelProto,
    layer_map: dict[str, str],
    values: dict[str, Any],
    xs: dict[str, Any],
    events: list[tuple[str, list[Any], int]],
) -> tuple[dict[str, str], dict[str, str]]:
    """The names whose tensor equals the module's output in ONNX Runtime, and for each name
    left out the nearest kept module in execution order (see the module docstring)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for tensor in sorted(set(layer_map.values()) - outputs - set(xs)):
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    feeds = {name: x.detach().cpu().numpy() for name, x in xs.items()}
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the optimiser's notes on the probe are not the user's
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        computed = dict(zip(names, session.run(None, feeds), strict=True))
    except Exception:  # noqa: BLE001 - ONNX Runtime cannot run it: no name can be checked
        computed = {}
    computed.update(feeds)
    kept = {q: t for q, t in layer_map.items()
            if t in computed and q in values and _same_values(computed[t], values[q])}
    order = {q: k for k, (q, _, _) in enumerate(events)}  # last call of each module
    unverified = {}
    for q in layer_map:
        if q not in kept:  # a kept module holding the same values is the best alternative
            same = [k for k, t in kept.items()
                    if q in values and _same_values(computed[t], values[q])]
            unverified[q] = _nearest(q, same or list(kept), order)
    return kept, unverified


def _same_values(got: np.ndarray, want: Any) -> bool:
    """ONNX Runtime's tensor equals the torch one: equal shapes; floats within a relative L2
    difference of 1e-3 (1e-2 if either is a 16-bit float; NaN where the other has NaN),
    anything else exactly."""
    import torch

    if tuple(got.shape) != tuple(want.shape):
        return False
    if not want.is_floating_point() or got.dtype.kind != "f":
        return bool(np.array_equal(got, want.cpu().numpy()))
    tolerance = 1e-2 if min(got.itemsize, want.element_size()) <= 2 else 1e-3
    want = want.detach().cpu()
    want = (want.float() if want.dtype == torch.bfloat16 else want).numpy()
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return False
    diff = np.nan_to_num(np.subtract(got, want, dtype=np.float64))
    # squared sums, not np.linalg.norm: its BLAS dot can take 30 ms on a busy machine
    scale = np.square(np.nan_to_num(want), dtype=np.float64).sum()
    return bool(np.square(diff).sum() <= tolerance**2 * scale + 1e-60)


def _nearest(name: str, kept: list[str], order: dict[str, int]) -> str:
    """The module of ``kept`` whose last call is nearest ``name``'s (the later one on a tie)."""
    if name not in order:
        return ""
    here = order[name]
    candidates = [q for q in kept if q and q in order]
    if not candidates:
        return ""
    return min(candidates, key=lambda q: (abs(order[q] - here), order[q] < here))
