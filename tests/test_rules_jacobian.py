"""Rules of ops that are linear in their input, against the forward op's exact Jacobian.

For a single node y = op(x) (other inputs constant) ONNX Runtime's forward pass, run on the
basis vectors of x, gives the Jacobian J column by column; the gradient rule, run on the
basis vectors of y, must give J's rows: its transpose. This covers every attribute
combination of Resize (each mode, coordinate transformation, nearest mode, scales or sizes,
1D / 2D / 3D), Pad (reflect / edge / wrap), strided and reversed Slice, DepthToSpace /
SpaceToDepth, Tile and Einsum, quickly and without an approximate reference. Single
non-linear nodes the torch exporter cannot write (GroupNormalization-18, refused by the ONNX
checker as deprecated) are compared with torch's vector-Jacobian product in float64.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from onnx_cam.graph.builder import GradBuilder  # noqa: E402
from onnx_cam.graph.rules import RULES  # noqa: E402
from onnx_cam.graph.rules import resize as resize_rules  # noqa: E402


def _single_node(op, shape, consts=(), attrs=None, opset=19):
    """x (batch axis dynamic) -> op(x, *consts) -> y, and the rule's dx for a seed g."""
    inits, names = [], ["x"]
    for i, value in enumerate(consts):
        if value is None:
            names.append("")
        else:
            inits.append(numpy_helper.from_array(np.asarray(value), f"c{i}"))
            names.append(f"c{i}")
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    proto = helper.make_model(helper.make_graph([node], "op", [x_info], [y_info], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    forward_only = ort.InferenceSession(proto.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(proto, data_prop=True))
    y = graph.outputs[0]
    if y.shape is None:  # GroupNormalization: ONNX inference leaves it untyped
        y.shape = graph.inputs[0].shape
    seed = gs.Variable("g", np.float32, [f"g{i}" for i in range(len(y.shape))])
    forward = graph.nodes[0]
    wants = [True] + [False] * (len(forward.inputs) - 1)
    dx = RULES[op](GradBuilder(graph, opset), forward, [seed], wants)[0]
    graph.inputs.append(seed)
    graph.outputs = [y, dx]
    for t in graph.outputs:
        t.dtype = np.float32
    proto = gs.export_onnx(graph)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return forward_only, session, {node.op_type for node in proto.graph.node}


def assert_transpose_of_jacobian(op, shape, consts=(), attrs=None, opset=19):
    """dx of the rule on each output basis vector == the matching row of ORT's Jacobian.
    Returns the Jacobian and the op types of the gradient graph."""
    forward, session, ops = _single_node(op, shape, consts, attrs, opset)
    size = int(np.prod(shape[1:]))
    x_basis = np.eye(size, dtype=np.float32).reshape(size, *shape[1:])
    columns = forward.run(["y"], {"x": x_basis})[0]
    item = columns.shape[1:]
    out_size = int(np.prod(item))
    jacobian = columns.reshape(size, out_size).T
    g_basis = np.eye(out_size, dtype=np.float32).reshape(out_size, *item)
    rows = session.run(None, {"x": np.zeros((out_size, *shape[1:]), np.float32),
                              "g": g_basis})[1]
    np.testing.assert_allclose(rows.reshape(out_size, size), jacobian, rtol=0, atol=2e-6)
    return jacobian, ops


# ---- Resize ---------------------------------------------------------------------------------
TRANSFORMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
              "tf_crop_and_resize", "half_pixel_symmetric"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def _resize_inputs(shape, out, by_sizes, roi):
    """roi, scales, sizes for the spatial axes (the batch axis is dynamic: opset 18 `axes`)."""
    if by_sizes:
        return [roi, None, np.array(out, np.int64)]
    return [roi, np.array([o / n for o, n in zip(out, shape[2:])], np.float32)]


@pytest.mark.parametrize(("dims", "mode"), [  # ONNX Runtime's cubic Resize is 2D only
    (1, "nearest"), (1, "linear"), (2, "nearest"), (2, "linear"), (2, "cubic"),
    (3, "nearest"), (3, "linear")])
def test_resize_every_transform(dims, mode):
    rng = np.random.default_rng(dims * 10 + len(mode))
    shape = {1: (1, 2, 7), 2: (1, 1, 5, 4), 3: (1, 1, 3, 4, 2)}[dims]
    for transform, by_sizes in itertools.product(TRANSFORMS, [False, True]):
        out = [int(v) for v in rng.choice([2, 3, 6, 9, 11], dims)]
        roi = None
        if transform == "tf_crop_and_resize":
            roi = np.array([*rng.uniform(-0.3, 0.4, dims), *rng.uniform(0.6, 1.3, dims)],
                           np.float32)
        attrs = {"mode": mode, "coordinate_transformation_mode": transform,
                 "axes": list(range(2, 2 + dims)),
                 "nearest_mode": NEAREST[len(transform) % 4]}
        if mode == "cubic":
            attrs["exclude_outside"] = int(by_sizes)
        consts = _resize_inputs(shape, out, by_sizes, roi)
        assert_transpose_of_jacobian("Resize", shape, consts, attrs)


@pytest.mark.parametrize("nearest_mode", NEAREST)
def test_resize_nearest_ties(nearest_mode):
    """Sizes whose source coordinates land on (or within rounding of) half-integers."""
    for size, out in [(7, 4), (28, 8), (26, 28), (11, 26), (6, 4), (4, 8)]:
        for transform in ("asymmetric", "half_pixel"):
            assert_transpose_of_jacobian(
                "Resize", (1, 1, size), [None, None, np.array([out], np.int64)],
                {"mode": "nearest", "coordinate_transformation_mode": transform, "axes": [2],
                 "nearest_mode": nearest_mode})


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_long_axes_take_the_sparse_form(mode, monkeypatch):
    """Long axes: each input feeds a few outputs, applied as weighted Gathers (not a MatMul);
    the length from which that pays is lowered so small axes take that form."""
    monkeypatch.setattr(resize_rules, "SPARSE_FACTOR", 4)
    cases = [((1, 1, 3, 40), [5, 83]), ((1, 1, 2, 90), [4, 31])]
    if mode != "cubic":  # 3D: the three forms (MatMul, copies summed, Gathers) in one node
        cases.append(((1, 1, 3, 2, 40), [5, 4, 83]))
    for shape, out in cases:
        axes = list(range(2, len(shape)))
        _, ops = assert_transpose_of_jacobian(
            "Resize", shape, [None, None, np.array(out, np.int64)], {"mode": mode, "axes": axes})
        assert "Gather" in ops


def test_resize_nearest_integer_factor_sums_the_copies():
    _, ops = assert_transpose_of_jacobian(
        "Resize", (1, 2, 3, 4), [None, np.array([1, 1, 2, 3], np.float32)],
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
         "nearest_mode": "floor"})
    assert "ReduceSum" in ops and "MatMul" not in ops


def test_resize_opset18_axes_and_antialias():
    assert_transpose_of_jacobian(
        "Resize", (1, 2, 6, 5), [None, np.array([0.5, 1.5], np.float32)],
        {"mode": "linear", "axes": [2, 3], "antialias": 1})
    assert_transpose_of_jacobian(
        "Resize", (1, 2, 6, 5), [None, None, np.array([9], np.int64)],
        {"mode": "cubic", "axes": [-1], "antialias": 1})


# ---- Pad, Slice, DepthToSpace / SpaceToDepth, Tile, Einsum ---------------------------------------
@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
def test_pad_modes(mode):
    assert_transpose_of_jacobian("Pad", (1, 2, 5, 4), [np.array([0, 0, 2, 3, 0, 0, 4, 1])],
                                 {"mode": mode})
    assert_transpose_of_jacobian("Pad", (1, 1, 3, 4, 3), [np.array([2, 0, 1, 1]),
                                                          None, np.array([2, -1])],
                                 {"mode": mode})


@pytest.mark.parametrize(("starts", "ends", "axes", "steps"), [
    ([0], [9], [2], [2]),                                  # x[..., ::2]
    ([-1], [-(2 ** 63)], [2], [-1]),                       # x.flip(-1)
    ([7, 1], [0, 8], [2, 3], [-3, 3]),                     # reversed with a stride, strided
    ([1, 0, 2], [3, 7, -1], [1, 3, 2], [1, 4, -2]),
    ([-20], [20], [3], [5]),                               # clamped bounds
])
def test_slice_steps(starts, ends, axes, steps):
    consts = [np.array(v, np.int64) for v in (starts, ends, axes, steps)]
    assert_transpose_of_jacobian("Slice", (1, 3, 9, 8), consts)


@pytest.mark.parametrize(("op", "attrs", "shape"), [
    ("DepthToSpace", {"blocksize": 2, "mode": "DCR"}, (1, 8, 3, 2)),
    ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}, (1, 8, 3, 2)),
    ("DepthToSpace", {"blocksize": 3, "mode": "CRD"}, (1, 9, 2, 2)),
    ("SpaceToDepth", {"blocksize": 2}, (1, 2, 4, 6)),
])
def test_depth_space(op, attrs, shape):
    jacobian, _ = assert_transpose_of_jacobian(op, shape, attrs=attrs)
    assert (jacobian.sum(0) == 1).all()  # a permutation


def test_tile():
    assert_transpose_of_jacobian("Tile", (1, 2, 3, 2), [np.array([1, 3, 1, 2], np.int64)])


@pytest.mark.parametrize(("equation", "shape", "other"), [
    ("nchw,cd->ndhw", (1, 3, 2, 2), (3, 4)),
    ("...ij,jk->...ik", (1, 2, 3, 4), (4, 2)),
    ("...ij,jk", (1, 3, 4), (4, 2)),                       # implicit output: "...ik"
    ("nct,c->nt", (1, 3, 5), (3,)),
    ("nct,ts->ncst", (1, 2, 3), (3, 2)),
])
def test_einsum(equation, shape, other):
    weights = np.random.default_rng(0).standard_normal(other).astype(np.float32)
    assert_transpose_of_jacobian("Einsum", shape, [weights], {"equation": equation})


# ---- non-linear single nodes against torch autograd --------------------------------------------
def assert_vjp_matches_torch(op, shape, consts, attrs, opset, torch_fn):
    """The rule's dx for random x and seed g equals torch's vector-Jacobian product (float64)."""
    torch = pytest.importorskip("torch")
    forward, session, _ = _single_node(op, shape, consts, attrs, opset)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *shape[1:])).astype(np.float32)
    y = forward.run(["y"], {"x": x})[0]
    g = rng.standard_normal(y.shape).astype(np.float32)
    y_ours, dx = session.run(None, {"x": x, "g": g})
    xt = torch.from_numpy(x).double().requires_grad_(True)
    yt = torch_fn(xt, *[torch.from_numpy(np.asarray(c)).double() for c in consts])
    (yt * torch.from_numpy(g).double()).sum().backward()
    np.testing.assert_allclose(y_ours, yt.detach().numpy(), rtol=0, atol=1e-5)
    scale = np.abs(xt.grad.numpy()).max()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_both_forms(opset):
    """Opset 18 scales / shifts each group, opset 21 each channel."""
    groups, channels = 2, 6
    n = groups if opset == 18 else channels
    rng = np.random.default_rng(opset)
    scale = (1 + 0.3 * rng.standard_normal(n)).astype(np.float32)
    bias = (0.2 * rng.standard_normal(n)).astype(np.float32)
    F = pytest.importorskip("torch.nn.functional")

    def reference(x, w, b):
        per = channels // n
        return F.group_norm(x, groups, w.repeat_interleave(per), b.repeat_interleave(per),
                            eps=1e-3)

    assert_vjp_matches_torch("GroupNormalization", (1, channels, 4, 3), [scale, bias],
                             {"num_groups": groups, "epsilon": 1e-3}, opset, reference)


@pytest.mark.parametrize("op", ["Max", "Min", "Mean"])
def test_variadic_broadcasting_extremes(op):
    """Three inputs, two of them broadcast; no ties (ties: test_fidelity's extremes2d)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    others = [rng.standard_normal((1, 3, 1, 4)).astype(np.float32),
              rng.standard_normal((4,)).astype(np.float32)]

    def reference(x, a, c):
        if op == "Mean":
            return (x + a + c) / 3
        pick = torch.maximum if op == "Max" else torch.minimum
        return pick(pick(x, a), c)

    assert_vjp_matches_torch(op, (1, 3, 2, 4), others, {}, 17, reference)


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gather_nd_accumulates_repeated_positions(batch_dims):
    """Indices that repeat (and count back from the end) must add their gradients up."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(batch_dims)
    shape = (2, 4, 5, 3)
    rows = rng.integers(-4, 4, (2, 7, 1))
    cols = rng.integers(-5, 5, (2, 7, 1))
    rows[:, :3], cols[:, :3] = 1, -2  # the same position three times in each item
    if batch_dims:
        indices = np.concatenate([rows, cols], -1)                       # (2, 7, 2)

        def reference(x, idx):
            idx = idx.long()
            return x[torch.arange(2)[:, None], idx[..., 0], idx[..., 1]]
    else:  # (item, row, col) triples: axis 0 is the batch axis itself
        items = rng.integers(0, 2, (2, 7, 1))
        indices = np.concatenate([items, rows, cols], -1)                # (2, 7, 3)

        def reference(x, idx):
            idx = idx.long()
            return x[idx[..., 0], idx[..., 1], idx[..., 2]]
    assert_vjp_matches_torch("GatherND", shape, [indices.astype(np.int64)],
                             {"batch_dims": batch_dims}, 17, reference)


def test_relu_gradient_is_exact_at_and_around_zero():
    """dx = g * Sign(y): g bit for bit where the input is positive (also subnormal), 0 where it
    is zero, -0.0 or negative, as torch's ReLU backward gives."""
    torch = pytest.importorskip("torch")
    _, session, ops = _single_node("Relu", (1, 2, 3, 4))
    assert "Where" not in ops
    tiny = np.float32(1e-42)  # subnormal
    x = np.array([0.0, -0.0, tiny, -tiny, 3.5, -2.0] * 8, np.float32).reshape(2, 2, 3, 4)
    g = np.random.default_rng(7).standard_normal(x.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    torch.relu(xt).backward(torch.from_numpy(g))
    np.testing.assert_array_equal(session.run(None, {"x": x, "g": g})[1], xt.grad.numpy())
