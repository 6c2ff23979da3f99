"""Gradients of the recurrent layers LSTM and GRU with respect to X, initial_h and initial_c.

Route: two ONNX ``Scan`` loops per direction, not an unrolled graph.

* Unrolling would emit ~30 nodes per time step, direction and layer (15,000 nodes for one
  bidirectional layer at T = 500), so export, checking and session creation would grow with T.
  With ``Scan`` the node count is fixed (~40-50 outer nodes and 3-10 node loop bodies per
  direction) whatever T is; the loop bodies read W / R from the enclosing graph.
* Everything that needs no recurrence is done outside the loops with batched ops over all T
  steps at once: Y holds every h_t, so the previous states (Y shifted by one step, initial_h
  at the start) give every gate pre-activation with two MatMuls, and the per-step backward
  coefficients (sigmoid / tanh derivatives, gate products) are formed as (T, N, k*H)
  tensors. The input gradient is one MatMul of the stacked gate gradients with W after the
  loop.
* Only the true recurrences loop: for LSTM a forward ``Scan`` rebuilds the cell states
  (c_t = f_t * c_{t-1} + i_t * g_t, one Mul and one Add per step; c_t cannot be recovered
  from h_t = o_t * tanh(c_t) stably), and for both cells a backward ``Scan`` carries dh (and
  dc) from the last processed step to the first with one (N, k*H) x (k*H, H) MatMul per step
  (two for a GRU with linear_before_reset=0) and emits the gate pre-activation gradients.
* The reverse direction runs the same loops with scan_input_directions /
  scan_output_directions = 1, so every tensor stays in time order.
* sequence_lens absent, or a constant equal to T everywhere, needs nothing. Otherwise a
  (T, N, 1) mask is formed at run time; masked steps freeze the state (forget / update gate 1,
  no gate gradient) and pass dh / dc through unchanged, which reproduces the ONNX semantics
  in both directions (Y zero beyond each length, Y_h / Y_c the last real state).
* Ops used: MatMul, Add, Sub, Mul, Sum, Concat, Split, Slice, Pad, Gather, Transpose,
  Unsqueeze, Identity, Sigmoid, Tanh, Where, Less, Cast, Shape, ConstantOfShape and Scan; all
  have CPU and CUDA kernels in onnxruntime (CUDA's Scan drives its body on the GPU).

Memory and length limit. The graph size does not depend on T, and no tensor is T x T: the
intermediate memory is linear in T. Per direction an LSTM forms about a dozen (T, N, 4H) or
(T, N, H) float32 tensors (pre-activations, gates and their derivatives, cell states and
their tanh, the coefficient stack, the loop's gate-gradient output), a GRU somewhat fewer.
With N = 64, H = 128 one (T, N, 4H) tensor is 128 KiB per step. Measured with onnxruntime
CPU (whole rewritten model: Conv1d with 64 channels, one bidirectional layer, hidden 128,
batch 64, T = 250 and 1000): the peak grows by 1.44 MiB per step for an LSTM and 1.07 MiB
per step for a GRU, forward pass included, so 24 GB holds T ~ 15,000 (LSTM) / ~ 20,000 (GRU)
per bidirectional layer and about twice that for one direction. Run time is linear in T
(~10 ms per step there on a busy 2-core CPU): the loops are sequential by nature.

Note: onnxruntime's CPU and CUDA LSTM / GRU kernels refuse layout=1 when the forward pass
runs, although the gradient rules here handle it.

Supported: opset 14+ LSTM / GRU, direction forward / reverse / bidirectional, layout 0 and 1,
optional B, initial_h, initial_c, sequence_lens and LSTM peepholes P (then i_t and f_t,
which read c_{t-1}, are formed inside the forward loop: a few more nodes per step), GRU
linear_before_reset 0 and 1, any of the outputs Y, Y_h, Y_c consumed. Refused (ValueError):
W, R, B or P depending on a target, activations other than the defaults (Sigmoid, Tanh,
Tanh), clip, input_forget.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import GradBuilder, static_shape
from . import register

_DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
_GATES = {"LSTM": 4, "GRU": 3}


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _present(node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index].name != ""


class _Cell:
    """The attributes of an LSTM / GRU node, checked against what the rules support."""

    def __init__(self, node, wants):
        op = node.op
        if any(wants[1:4]) or (op == "LSTM" and len(wants) > 7 and wants[7]):
            raise ValueError(f"the {op} weights or biases depend on a target layer")
        self.direction = _text(node.attrs.get("direction", "forward"))
        self.reverse = {"forward": [False], "reverse": [True],
                        "bidirectional": [False, True]}.get(self.direction)
        if self.reverse is None:
            raise ValueError(f"unknown direction {self.direction!r}")
        activations = node.attrs.get("activations")
        expected = _DEFAULT_ACTIVATIONS[op] * len(self.reverse)
        if activations is not None and [_text(a).lower() for a in activations] != expected:
            raise ValueError(f"activations {[_text(a) for a in activations]} are not supported; "
                             "only the defaults (Sigmoid, Tanh, Tanh) are")
        if node.attrs.get("clip") is not None:
            raise ValueError("cell clipping (clip) is not supported")
        if op == "LSTM" and node.attrs.get("input_forget", 0):
            raise ValueError("input_forget=1 is not supported")
        peep = node.inputs[7] if op == "LSTM" and _present(node, 7) else None
        self.peepholes = peep is not None and not (isinstance(peep, gs.Constant)
                                                   and not np.any(peep.values))
        self.layout = node.attrs.get("layout", 0)
        self.linear_before_reset = node.attrs.get("linear_before_reset", 0)
        r_shape = node.inputs[2].shape
        self.hidden = node.attrs.get("hidden_size") or (r_shape[-1] if r_shape else None)
        if not isinstance(self.hidden, int):
            raise ValueError("the hidden size is unknown")
        x_shape = static_shape(node.inputs[0])
        self.length = x_shape[1] if self.layout else x_shape[0]
        self.gates = _GATES[op]


# ---- small graph helpers --------------------------------------------------------------------
def _pick(b, tensor, index: int, axis: int):
    """tensor[index] along `axis`, that axis removed."""
    return b.op("Gather", [tensor, b.const(np.int64(index), np.int64)], {"axis": axis})


def _cols(b, tensor, start: int, stop: int, axis: int = -1):
    return b.op("Slice", [tensor, b.ints([start]), b.ints([stop]), b.ints([axis])])


def _split(b, tensor, sizes: list[int]):
    return b.op("Split", [tensor, b.ints(sizes)], {"axis": -1}, outputs=len(sizes))


def _sub_from_one(b, t):
    return b.op("Sub", [np.float32(1), t])


def _transpose(b, t, perm):
    return b.op("Transpose", [t], {"perm": list(perm)})


def _previous(b, seq, init, reverse: bool, mask_shift=None):
    """The state before each step in processing order: seq (T, N, H) moved by one step.

    Forward: [init, seq[0], ..., seq[T-2]]; reverse: [seq[1], ..., seq[T-1], init]. With a
    mask, seq is zero at masked steps and init takes over wherever the neighbour is masked.
    """
    if reverse:
        body = b.op("Slice", [seq, b.ints([1]), b.ints([np.iinfo(np.int64).max]), b.ints([0])])
        pads = [0, 0, 0, 1, 0, 0]
    else:
        body = b.op("Slice", [seq, b.ints([0]), b.ints([-1]), b.ints([0])])
        pads = [1, 0, 0, 0, 0, 0]
    if init is None:
        return b.op("Pad", [body, b.ints(pads)])
    if mask_shift is None:
        first = b.op("Unsqueeze", [init, b.ints([0])])
        return b.op("Concat", [body, first] if reverse else [first, body], {"axis": 0})
    padded = b.op("Pad", [body, b.ints(pads)])
    return b.op("Add", [padded, b.mul(_sub_from_one(b, mask_shift), init)])


def _shift_mask(b, mask, reverse: bool):
    """mask of the neighbouring step in processing order; 0 beyond the ends."""
    return _previous(b, mask, None, reverse)


def _scan(b, states, scans, reverse: bool, build, n_outputs: int):
    """A Scan over axis 0 of `scans` carrying `states`; build(bb, states, slices) returns
    (new_states, per-step outputs). Returns the final states then the stacked outputs."""
    body = gs.Graph(opset=b.opset)
    bb = GradBuilder(body, b.opset)
    bb._name = b._name  # one name counter: tensor names stay unique across graph scopes
    state_in = [gs.Variable(b._name("state"), dtype=np.float32) for _ in states]
    slice_in = [gs.Variable(b._name("slice"), dtype=np.float32) for _ in scans]
    new_states, outs = build(bb, state_in, slice_in)
    body.inputs = state_in + slice_in
    body_outputs = []
    for t in list(new_states) + list(outs):
        if any(t is u for u in body.inputs + body_outputs):  # an output needs its own tensor
            t = bb.op("Identity", [t])
        body_outputs.append(t)
    body.outputs = body_outputs
    direction = int(reverse)
    attrs = {"body": body, "num_scan_inputs": len(scans),
             "scan_input_directions": [direction] * len(scans),
             "scan_output_directions": [direction] * n_outputs}
    return b.op("Scan", list(states) + list(scans), attrs,
                outputs=len(states) + n_outputs)


def _zeros_nh(b, x_tn, hidden: int):
    """Zeros shaped (N, H), N read from X (T, N, I) at run time."""
    batch = b.op("Slice", [b.shape_of(x_tn), b.ints([1]), b.ints([2])], dtype=np.int64)
    shape = b.op("Concat", [batch, b.ints([hidden])], {"axis": 0}, dtype=np.int64)
    zero = gs.Constant(b._name("zero"), np.zeros(1, np.float32))
    return b.op("ConstantOfShape", [shape], {"value": zero})


class _Inputs:
    """The node's tensors rearranged to layout 0 and split by direction."""

    def __init__(self, b, node, cell: _Cell, grads):
        self.b, self.cell = b, cell
        lay = cell.layout
        self.x = _transpose(b, node.inputs[0], [1, 0, 2]) if lay else node.inputs[0]
        if node.outputs[0].name == "":  # Y is needed to recompute the gates
            node.outputs[0] = gs.Variable(b._name("Y"), dtype=np.float32)
        self.y = self._seq_out(node.outputs[0])
        self.dy = self._seq_out(grads[0]) if grads[0] is not None else None
        self.d_final = [self._state(g) if g is not None else None
                        for g in list(grads[1:]) + [None] * (3 - len(grads))][:2]
        self.init = [self._state(node.inputs[i]) if _present(node, i) else None for i in (5, 6)]
        self.weights = [node.inputs[1], node.inputs[2]]
        self.peepholes = node.inputs[7] if cell.peepholes else None
        self.bias = node.inputs[3] if _present(node, 3) else None
        self.mask = self.mask_bool = None
        if _present(node, 4):
            self._sequence_mask(node.inputs[4])

    def _seq_out(self, t):  # Y: (N, T, D, H) -> (T, D, N, H)
        return _transpose(self.b, t, [1, 2, 0, 3]) if self.cell.layout else t

    def _state(self, t):  # (N, D, H) -> (D, N, H)
        return _transpose(self.b, t, [1, 0, 2]) if self.cell.layout else t

    def _sequence_mask(self, lens):
        b, length = self.b, self.cell.length
        if isinstance(lens, gs.Constant) and np.all(lens.values == length):
            return
        if not isinstance(length, int):
            raise ValueError("sequence_lens with a dynamic sequence length")
        steps = b.const(np.arange(length, dtype=np.int32).reshape(length, 1), np.int32)
        lens32 = b.op("Cast", [lens], {"to": 6}, dtype=np.int32)
        inside = b.op("Less", [steps, lens32], dtype=np.bool_)  # (T, N)
        self.mask_bool = b.op("Unsqueeze", [inside, b.ints([2])], dtype=np.bool_)
        self.mask = b.op("Cast", [self.mask_bool], {"to": 1})  # (T, N, 1) float

    def direction(self, d: int) -> dict:
        """Per-direction tensors: W (G*H, I), R (G*H, H), bias (G*H,) or None, Y, dY, seeds."""
        b, gh = self.b, self.cell.gates * self.cell.hidden
        w, r = (_pick(b, t, d, 0) for t in self.weights)
        bias = None
        if self.bias is not None:
            both = _pick(b, self.bias, d, 0)
            bias = (_cols(b, both, 0, gh, 0), _cols(b, both, gh, 2 * gh, 0))
        peep = None
        if self.peepholes is not None:  # P holds (p_i, p_o, p_f) per direction
            both = _pick(b, self.peepholes, d, 0)
            h = self.cell.hidden
            peep = [_cols(b, both, k * h, (k + 1) * h, 0) for k in range(3)]
        return {
            "w": w, "r": r, "bias": bias, "peep": peep,
            "y": _pick(b, self.y, d, 1),
            "dy": None if self.dy is None else _pick(b, self.dy, d, 1),
            "seed": [None if g is None else _pick(b, g, d, 0) for g in self.d_final],
            "init": [None if s is None else _pick(b, s, d, 0) for s in self.init],
        }

    def masked(self, t, fill=None):
        """t where the step is real; 0 (or `fill`) at masked steps."""
        if self.mask is None:
            return t
        if fill is None:
            return self.b.mul(t, self.mask)
        return self.b.where(self.mask_bool, t, np.float32(fill))


def _finish(b, node, cell: _Cell, wants, grads_x, grads_init):
    """Sum the directions' input gradients and restore the node's layout."""
    result = [None] * len(node.inputs)
    if wants[0]:
        dx = b.add_all(grads_x)
        result[0] = _transpose(b, dx, [1, 0, 2]) if cell.layout else dx
    for k, index in enumerate((5, 6)):
        if index < len(node.inputs) and wants[index] and _present(node, index):
            stacked = b.op("Concat", [b.op("Unsqueeze", [g[k], b.ints([0])]) for g in grads_init],
                           {"axis": 0})
            result[index] = _transpose(b, stacked, [1, 0, 2]) if cell.layout else stacked
    return result


def _gate_inputs(b, inp: _Inputs, t: dict, reverse: bool):
    """Previous hidden states (T, N, H) and X W^T (+ W bias) for all steps at once."""
    mask_shift = None if inp.mask is None else _shift_mask(b, inp.mask, reverse)
    h_prev = _previous(b, t["y"], t["init"][0], reverse, mask_shift)
    gx = b.op("MatMul", [inp.x, _transpose(b, t["w"], [1, 0])])
    if t["bias"] is not None:
        gx = b.op("Add", [gx, t["bias"][0]])
    return h_prev, gx


def _seed(b, inp: _Inputs, seed):
    return seed if seed is not None else _zeros_nh(b, inp.x, inp.cell.hidden)


# ---- LSTM -----------------------------------------------------------------------------------
def _lstm_direction(b, inp: _Inputs, t: dict, reverse: bool):
    hidden = inp.cell.hidden
    h_prev, gx = _gate_inputs(b, inp, t, reverse)
    pre = b.op("Add", [gx, b.op("MatMul", [h_prev, _transpose(b, t["r"], [1, 0])])])
    if t["bias"] is not None:
        pre = b.op("Add", [pre, t["bias"][1]])
    g = b.op("Tanh", [_cols(b, pre, 3 * hidden, 4 * hidden)])
    c0 = t["init"][1]
    if t["peep"] is None:
        sig = b.op("Sigmoid", [_cols(b, pre, 0, 3 * hidden)])
        i, o, f = _split(b, sig, [hidden] * 3)
        di, do, df = _split(b, b.mul(sig, _sub_from_one(b, sig)), [hidden] * 3)
        f = inp.masked(f, fill=1.0)

        def cell_step(bb, states, slices):
            (c,), (f_t, ig_t) = states, slices
            c_new = bb.op("Add", [bb.mul(f_t, c), ig_t])
            return [c_new], [c_new]

        _, c = _scan(b, [_seed(b, inp, c0)], [f, inp.masked(b.mul(i, g))], reverse,
                     cell_step, 1)
        c_prev = _previous(b, c, c0, reverse)
        f_back = f
    else:
        c, c_prev, (i, o, f), (di, do, df) = _peephole_cells(b, inp, t, pre, g, reverse)
        p_i, _, p_f = t["peep"]
        # i and f read c_{t-1}: dc_{t-1} also flows through their pre-activations
        f_back = b.op("Sum", [f, b.mul(b.mul(g, di), p_i), b.mul(b.mul(c_prev, df), p_f)])
        f_back = inp.masked(f_back, fill=1.0)
    tc = b.op("Tanh", [c])
    coeff = b.op("Concat", [b.mul(g, di), b.mul(tc, do), b.mul(c_prev, df),
                            b.mul(i, _sub_from_one(b, b.mul(g, g)))], {"axis": -1})
    coeff = inp.masked(coeff)
    through_c = b.mul(o, _sub_from_one(b, b.mul(tc, tc)))
    if t["peep"] is not None:  # o reads c_t
        through_c = b.op("Add", [through_c, b.mul(b.mul(tc, do), t["peep"][1])])
    through_c = inp.masked(through_c)
    scans = [coeff, through_c, f_back]
    if t["dy"] is not None:
        scans.append(inp.masked(t["dy"]))
    if inp.mask is not None:
        scans.append(_sub_from_one(b, inp.mask))
    r = t["r"]

    def backward_step(bb, states, slices):
        (dh, dc), (k_t, ac_t, f_t, *rest) = states, slices
        if t["dy"] is not None:
            dh = bb.op("Add", [dh, rest.pop(0)])
        dc = bb.op("Add", [dc, bb.mul(dh, ac_t)])
        d_pre = bb.mul(bb.op("Concat", [dc, dh, dc, dc], {"axis": -1}), k_t)
        dh_prev = bb.op("MatMul", [d_pre, r])
        if rest:  # masked steps pass dh through
            dh_prev = bb.op("Add", [dh_prev, bb.mul(dh, rest.pop(0))])
        return [dh_prev, bb.mul(dc, f_t)], [d_pre]

    seeds = [_seed(b, inp, s) for s in t["seed"]]
    dh0, dc0, d_pre = _scan(b, seeds, scans, not reverse, backward_step, 1)
    return b.op("MatMul", [d_pre, t["w"]]), (dh0, dc0)


def _peephole_cells(b, inp: _Inputs, t: dict, pre, g, reverse: bool):
    """Cell states when the gates read them (P): i_t and f_t depend on c_{t-1}, so both are
    formed inside the forward loop; afterwards all gates are recomputed at once from the
    cell states, o_t from c_t. Returns c, c_prev, gates (i, o, f) and their derivatives."""
    hidden = inp.cell.hidden
    p_i, p_o, p_f = t["peep"]
    pre_i, pre_o, pre_f = (_cols(b, pre, k * hidden, (k + 1) * hidden) for k in range(3))
    c0 = t["init"][1]
    scans = [pre_i, pre_f, g] + ([inp.mask] if inp.mask is not None else [])

    def cell_step(bb, states, slices):
        (c,), (a_i, a_f, g_t, *mask) = states, slices
        i_t = bb.op("Sigmoid", [bb.op("Add", [a_i, bb.mul(p_i, c)])])
        f_t = bb.op("Sigmoid", [bb.op("Add", [a_f, bb.mul(p_f, c)])])
        ig_t = bb.mul(i_t, g_t)
        if mask:  # masked steps keep the state: f = 1, no input (exact for a 0 / 1 mask)
            f_t = bb.op("Add", [bb.mul(f_t, mask[0]), _sub_from_one(bb, mask[0])])
            ig_t = bb.mul(ig_t, mask[0])
        c_new = bb.op("Add", [bb.mul(f_t, c), ig_t])
        return [c_new], [c_new]

    _, c = _scan(b, [_seed(b, inp, c0)], scans, reverse, cell_step, 1)
    c_prev = _previous(b, c, c0, reverse)
    gates = [b.op("Sigmoid", [b.op("Add", [a, b.mul(p, state)])])
             for a, p, state in ((pre_i, p_i, c_prev), (pre_o, p_o, c), (pre_f, p_f, c_prev))]
    slopes = [b.mul(s, _sub_from_one(b, s)) for s in gates]
    return c, c_prev, gates, slopes


# ---- GRU ------------------------------------------------------------------------------------
def _gru_direction(b, inp: _Inputs, t: dict, reverse: bool):
    hidden = inp.cell.hidden
    h_prev, gx = _gate_inputs(b, inp, t, reverse)
    r_all = t["r"]
    rb = t["bias"][1] if t["bias"] is not None else None
    gx_zr, gx_n = _split(b, gx, [2 * hidden, hidden])
    if inp.cell.linear_before_reset:
        gh = b.op("MatMul", [h_prev, _transpose(b, r_all, [1, 0])])
        if rb is not None:
            gh = b.op("Add", [gh, rb])
        gh_zr, gh_n = _split(b, gh, [2 * hidden, hidden])
    else:
        r_zr, r_n = _cols(b, r_all, 0, 2 * hidden, 0), _cols(b, r_all, 2 * hidden, 3 * hidden, 0)
        gh_zr = b.op("MatMul", [h_prev, _transpose(b, r_zr, [1, 0])])
        if rb is not None:
            gh_zr = b.op("Add", [gh_zr, _cols(b, rb, 0, 2 * hidden, 0)])
    zr = b.op("Sigmoid", [b.op("Add", [gx_zr, gh_zr])])
    z, r = _split(b, zr, [hidden, hidden])
    dz, dr = _split(b, b.mul(zr, _sub_from_one(b, zr)), [hidden, hidden])
    if inp.cell.linear_before_reset:
        n = b.op("Tanh", [b.op("Add", [gx_n, b.mul(r, gh_n)])])
        through_r = b.mul(gh_n, dr)
    else:
        reset = b.op("MatMul", [b.mul(r, h_prev), _transpose(b, r_n, [1, 0])])
        if rb is not None:
            reset = b.op("Add", [reset, _cols(b, rb, 2 * hidden, 3 * hidden, 0)])
        n = b.op("Tanh", [b.op("Add", [gx_n, reset])])
        through_r = b.mul(h_prev, dr)
    through_n = inp.masked(b.mul(_sub_from_one(b, z), _sub_from_one(b, b.mul(n, n))))
    through_z = inp.masked(b.mul(b.op("Sub", [h_prev, n]), dz))
    scans = [through_n, through_z, through_r, r, inp.masked(z, fill=1.0)]
    if t["dy"] is not None:
        scans.append(inp.masked(t["dy"]))
    lbr = inp.cell.linear_before_reset

    def backward_step(bb, states, slices):
        (dh,), (an_t, az_t, ar_t, r_t, z_t, *rest) = states, slices
        if rest:
            dh = bb.op("Add", [dh, rest[0]])
        dn = bb.mul(dh, an_t)
        dz_pre = bb.mul(dh, az_t)
        direct = bb.mul(dh, z_t)
        if lbr:
            dr_pre = bb.mul(dn, ar_t)
            back = bb.op("Concat", [dz_pre, dr_pre, bb.mul(dn, r_t)], {"axis": -1})
            dh_prev = bb.op("Add", [direct, bb.op("MatMul", [back, r_all])])
        else:
            via_n = bb.op("MatMul", [dn, r_n])
            dr_pre = bb.mul(via_n, ar_t)
            back = bb.op("MatMul", [bb.op("Concat", [dz_pre, dr_pre], {"axis": -1}), r_zr])
            dh_prev = bb.op("Sum", [direct, bb.mul(via_n, r_t), back])
        return [dh_prev], [bb.op("Concat", [dz_pre, dr_pre, dn], {"axis": -1})]

    dh0, d_pre = _scan(b, [_seed(b, inp, t["seed"][0])], scans, not reverse, backward_step, 1)
    return b.op("MatMul", [d_pre, t["w"]]), (dh0,)


@register("LSTM", "GRU")
def recurrent(b, node, grads, wants):
    cell = _Cell(node, wants)
    inp = _Inputs(b, node, cell, grads)
    step = _lstm_direction if node.op == "LSTM" else _gru_direction
    grads_x, grads_init = [], []
    for d, reverse in enumerate(cell.reverse):
        dx, d_init = step(b, inp, inp.direction(d), reverse)
        grads_x.append(dx)
        grads_init.append(d_init)
    return _finish(b, node, cell, wants, grads_x, grads_init)
