"""Segmentation and detection targets (onnx_cam.Segmentation, onnx_cam.Detection) on small
U-Nets (1D, 2D, 3D: ConvTranspose, Resize, Concat on the gradient's path) and YOLO / DETR
style heads built here in torch. References: torch autograd of the same score, written out
in each test; pytorch-grad-cam 1.5.7's SemanticSegmentationTarget and
FasterRCNNBoxScoreTarget with its GradCAM / ScoreCAM / EigenCAM."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torch_zoo import INTERP, assert_close, randomize, ref_gradcam, ref_hirescam

import onnx_cam
from onnx_cam import Detection, Segmentation

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SIZES = {1: (32,), 2: (16, 16), 3: (8, 8, 8)}
LAYERS = ["dec1", "dec2", "enc3"]  # after ConvTranspose + Concat, after Resize + Concat, bottom


class UNet(nn.Module):
    """Two levels down, one up by Resize, one up by ConvTranspose, skips by Concat."""

    def __init__(self, dim: int, classes: int = 3, channels_last_output: bool = False):
        super().__init__()
        conv = CONV[dim]
        self.enc1 = nn.Sequential(conv(2, 6, 3, padding=1), BN[dim](6), nn.ReLU())
        self.enc2 = nn.Sequential(conv(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.enc3 = nn.Sequential(conv(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.up3 = nn.Upsample(scale_factor=2, mode=INTERP[dim], align_corners=False)
        self.dec2 = nn.Sequential(conv(16, 8, 3, padding=1), nn.ReLU())
        self.up2 = CONV_T[dim](8, 6, 2, stride=2)
        self.dec1 = nn.Sequential(conv(12, 6, 3, padding=1), nn.ReLU())
        self.out = conv(6, classes, 1)
        self.channels_last_output = channels_last_output

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up3(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up2(d2), e1], 1))
        out = self.out(d1)
        return out.movedim(1, -1) if self.channels_last_output else out


def unet(dim: int, **kwargs):
    torch.manual_seed(dim)
    net = randomize(UNet(dim, **kwargs), dim)
    x = torch.randn(2, 2, *SIZES[dim])
    return net, x, onnx_cam.Explainer(net, example_input=x)


def autograd(net: nn.Module, x: torch.Tensor, layers: list[str], score):
    """Per layer (activations, d score / d activations) by torch autograd; score(output) is
    summed over the batch (items do not interact)."""
    modules, kept = dict(net.named_modules()), {}

    def keep(name):
        def hook(_module, _inputs, out):
            out.retain_grad()
            kept[name] = out
        return hook

    handles = [modules[name].register_forward_hook(keep(name)) for name in layers]
    try:
        out = net(x.clone().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    score(out).sum().backward()
    return {name: (kept[name].detach().double().numpy(), kept[name].grad.double().numpy())
            for name in layers}


def check_maps(exp, x, targets, ref: dict, methods=("gradcam", "hirescam")):
    """Activations, gradients and raw Grad-CAM / HiResCAM against the autograd reference."""
    _, per_layer = exp.activations_and_gradients(x.numpy(), targets=targets, layers=list(ref))
    res = exp.explain(x.numpy(), targets=targets, layers=list(ref), methods=list(methods))
    for name, (a_ref, g_ref) in ref.items():
        a, g = per_layer[name]
        assert_close(a, a_ref, f"activations of {name}")
        assert_close(g, g_ref, f"gradients of {name}")
        for method, formula in (("gradcam", ref_gradcam), ("hirescam", ref_hirescam)):
            pre, magnitude = formula(a_ref, g_ref)
            assert_close(res.raw(method, name), np.maximum(pre, 0), f"{method} of {name}",
                         scale=float(np.abs(pre).max()), floor=1e-5 * magnitude)
    return res


# ---------------------------------------------------------------------------- segmentation
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_segmentation_with_masks_matches_autograd(dim):
    net, x, exp = unet(dim)
    rng = np.random.default_rng(dim)
    masks = rng.random((2, *SIZES[dim])) < 0.3          # one mask per item
    weights = rng.random(SIZES[dim]).astype(np.float32)  # float weights, the same for both
    for cls, mask in ((2, masks), (0, weights)):
        def one(out, cls=cls, mask=mask):
            return (out[:, cls] * torch.from_numpy(np.asarray(mask))).flatten(1).sum(1)
        ref = autograd(net, x, LAYERS, one)
        res = check_maps(exp, x, Segmentation(cls, mask), ref)
        assert res.targets.tolist() == [cls, cls]
        assert res.logits.shape == (2, 3, *SIZES[dim])
        assert res.predicted.shape == (2, *SIZES[dim])
        np.testing.assert_array_equal(res.predicted, res.logits.argmax(1))


@pytest.mark.parametrize("dim", [1, 3])
def test_default_mask_is_where_the_class_is_predicted(dim):
    net, x, exp = unet(dim)
    with torch.no_grad():
        predicted = net(x).argmax(1)
    cls = int(torch.mode(predicted.flatten()).values)
    ref = autograd(net, x, LAYERS[:2],
                      lambda out: (out[:, cls] * (predicted == cls)).flatten(1).sum(1))
    check_maps(exp, x, Segmentation(cls), ref)


def test_several_maps_per_item_tuples_and_channels_last_outputs():
    net, x, exp = unet(1, channels_last_output=True)   # (N, T, classes)
    mask = np.zeros(32, bool)
    mask[8:20] = True
    res = exp.explain(x.numpy(), targets=[[Segmentation(0, mask, class_axis=-1),
                                           Segmentation(1, mask, class_axis=2)],
                                          Segmentation(2, mask, class_axis=-1)],
                      layers="dec1")
    assert res.items.tolist() == [0, 0, 1] and res.targets.tolist() == [0, 1, 2]
    from onnx_cam.viz.titles import row_title
    assert row_title(res, 2) == "class 2"  # figures of dense rows name the class explained
    for row, (item, cls) in enumerate(((0, 0), (0, 1), (1, 2))):
        ref = autograd(net, x[item:item + 1], ["dec1"],
                          lambda out, c=cls: (out[..., c] * torch.from_numpy(mask)).sum(1))
        a, g = ref["dec1"]
        assert_close(res.raw("gradcam", "dec1")[row:row + 1], np.maximum(ref_gradcam(a, g)[0], 0),
                     "gradcam of a channels-last output")
    # a (class, mask) tuple is Segmentation(class, mask), here on a channels-first output
    net, x, exp = unet(2)
    mask = np.ones((16, 16), bool)
    by_tuple = exp.explain(x.numpy(), targets=[(1, mask), (2, mask)], layers="dec1")
    by_object = exp.explain(x.numpy(), targets=[Segmentation(1, mask), Segmentation(2, mask)],
                            layers="dec1")
    np.testing.assert_array_equal(by_tuple.cam(), by_object.cam())
    assert by_tuple.targets.tolist() == [1, 2]


def test_sigmoid_head_probabilities():
    """Under a final Sigmoid (multi-label segmentation) score='probs' sums probabilities."""
    torch.manual_seed(4)
    net = nn.Sequential(randomize(UNet(2), 4), nn.Sigmoid()).eval()
    x = torch.randn(2, 2, 16, 16)
    exp = onnx_cam.Explainer(net, example_input=x)
    mask = np.zeros((16, 16), np.float32)
    mask[2:9, 5:14] = 1
    for score, transform in (("probs", torch.sigmoid),
                             ("log_probs", torch.nn.functional.logsigmoid)):
        ref = autograd(net[0], x, ["dec2"],
                       lambda out, f=transform: (f(out[:, 1]) * torch.from_numpy(mask)).sum((1, 2)))
        res = exp.explain(x.numpy(), targets=Segmentation(1, mask), layers="0.dec2",
                          score=score)
        assert_close(res.raw(), np.maximum(ref_gradcam(*ref["dec2"])[0], 0), score)
    with torch.no_grad():
        np.testing.assert_allclose(res.probs, net(x).numpy(), atol=1e-6)


def test_softmax_head_explains_the_logits_before_it():
    torch.manual_seed(6)
    net = nn.Sequential(randomize(UNet(2), 6), nn.Softmax(dim=1)).eval()
    x = torch.randn(2, 2, 16, 16)
    exp = onnx_cam.Explainer(net, example_input=x)
    mask = np.ones((16, 16), np.float32)
    ref = autograd(net[0], x, ["dec2"],
                   lambda out: (out[:, 0] * torch.from_numpy(mask)).sum((1, 2)))
    res = exp.explain(x.numpy(), targets=Segmentation(0, mask), layers="0.dec2")
    assert_close(res.raw(), np.maximum(ref_gradcam(*ref["dec2"])[0], 0), "logits below softmax")
    with torch.no_grad():
        np.testing.assert_allclose(res.probs, net(x).numpy(), atol=1e-6)
        np.testing.assert_array_equal(res.predicted, net(x).argmax(1).numpy())


@pytest.mark.parametrize("dim", [2, 3])
def test_segmentation_equals_pytorch_grad_cam(dim):
    from references import pytorch_grad_cam
    pgc = pytorch_grad_cam()
    net, x, exp = unet(dim)
    rng = np.random.default_rng(0)
    masks = (rng.random((2, *SIZES[dim])) < 0.4).astype(np.float32)
    targets = [pgc.utils.model_targets.SemanticSegmentationTarget(1, m) for m in masks]
    ours = [Segmentation(1, m) for m in masks]
    methods = [("gradcam", pgc.GradCAM), ("hirescam", pgc.HiResCAM)]
    if dim == 2:  # the masked sum is their score too
        methods += [("scorecam", pgc.ScoreCAM), ("ablationcam", pgc.AblationCAM)]
    for name, cam in methods:  # dec1 has the input's size: pytorch-grad-cam's resize is identity
        ref = cam(model=net, target_layers=[net.dec1])(input_tensor=x, targets=targets)
        res = exp.explain(x.numpy(), targets=ours, layers="dec1", methods=name)
        np.testing.assert_allclose(res.cam(), ref, atol=1e-3, err_msg=name)


# ------------------------------------------------------------------------------- detection
class TinyYolo(nn.Module):
    """A YOLO-style raw head on a two-level FPN (stride 4: 8 x 8 cells, stride 8: 4 x 4; the
    deep level upsampled and concatenated into the shallow one): per cell one box (cx, cy, w,
    h in pixels, decoded from its grid), [objectness,] class scores after sigmoid; the levels'
    80 boxes concatenated, (N, boxes, fields) or (N, fields, boxes)."""

    def __init__(self, classes: int = 3, objectness: bool = True, transposed: bool = False):
        super().__init__()
        fields = 4 + objectness + classes
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral = nn.Sequential(nn.Conv2d(32, 16, 1), nn.ReLU())
        self.head4, self.head8 = nn.Conv2d(16, fields, 1), nn.Conv2d(16, fields, 1)
        self.transposed = transposed
        for cells in (8, 4):
            ys, xs = torch.meshgrid(torch.arange(cells * 1.0), torch.arange(cells * 1.0),
                                    indexing="ij")
            self.register_buffer(f"grid{cells}", torch.stack([xs.flatten(), ys.flatten()])[None])

    @staticmethod
    def decode(p, grid, stride: float):
        p = p.flatten(2)                                       # (N, fields, cells)
        xy = (torch.sigmoid(p[:, :2]) + grid) * stride
        wh = torch.exp(p[:, 2:4]) * 2 * stride
        return torch.cat([xy, wh, torch.sigmoid(p[:, 4:])], 1)

    def forward(self, x):
        shallow = self.backbone(x)
        deep = self.deep(shallow)
        fused = self.lateral(torch.cat([self.up(deep), shallow], 1))
        out = torch.cat([self.decode(self.head4(fused), self.grid8, 4.0),
                         self.decode(self.head8(deep), self.grid4, 8.0)], 2)
        return out if self.transposed else out.transpose(1, 2)


def yolo(**kwargs):
    torch.manual_seed(3)
    net = TinyYolo(**kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    return net, x, onnx_cam.Explainer(net, example_input=x)


def corners(cxcywh: np.ndarray) -> np.ndarray:
    return np.concatenate([cxcywh[..., :2] - cxcywh[..., 2:] / 2,
                           cxcywh[..., :2] + cxcywh[..., 2:] / 2], -1)


@pytest.mark.parametrize(("objectness", "transposed"), [(True, False), (False, True)])
def test_detection_box_index_matches_autograd(objectness, transposed):
    net, x, exp = yolo(objectness=objectness, transposed=transposed)
    boxes, cls = [5, 70], [2, 0]  # a box of the shallow level, one of the deep level
    first = 4 + objectness

    def score(out):
        table = out.transpose(1, 2) if transposed else out
        rows = torch.arange(2)
        value = table[rows, boxes, first + torch.tensor(cls)]
        return value * table[rows, boxes, 4] if objectness else value

    ref = autograd(net, x, ["lateral", "deep", "backbone.3", "backbone.1"], score)
    targets = [Detection(b, c, layout="yolo_t" if transposed else "yolo",
                         objectness=objectness) for b, c in zip(boxes, cls)]
    res = check_maps(exp, x, targets, ref)
    assert res.targets.tolist() == cls
    assert res.predicted.shape == (2, 80)


def test_detection_by_coordinates_and_best_class():
    net, x, exp = yolo()
    with torch.no_grad():
        out = net(x).numpy().astype(np.float64)
    conf = out[..., 5:] * out[..., 4:5]
    item_boxes = []
    for i in range(2):
        best = int(np.argmax(conf[i].max(1)))          # the box NMS keeps first
        item_boxes.append((best, int(np.argmax(conf[i, best]))))
    shifted = [corners(out[i, b, :4]) + 0.5 for i, (b, _) in enumerate(item_boxes)]
    targets = [Detection(box=tuple(s), objectness=True) for s in shifted]
    res = exp.explain(x.numpy(), targets=targets, layers="backbone.3")
    assert res.targets.tolist() == [c for _, c in item_boxes]
    by_index = exp.explain(x.numpy(), targets=[Detection(b, c, objectness=True)
                                               for b, c in item_boxes], layers="backbone.3")
    np.testing.assert_array_equal(res.raw(), by_index.raw())


def test_detection_equals_pytorch_grad_cams_box_score_target():
    """FasterRCNNBoxScoreTarget on the kept boxes (coordinates detached, as a detector's NMS
    output: IoU adds a constant) scores each box's objectness x class score."""
    from references import pytorch_grad_cam
    pgc = pytorch_grad_cam()
    net, x, exp = yolo()

    class Kept(nn.Module):  # Faster R-CNN's output format: per image boxes, labels, scores
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, images):
            out = self.net(images)
            conf = out[..., 5:] * out[..., 4:5]
            best = conf.amax(2).topk(4, dim=1).indices
            return [{"boxes": torch.as_tensor(corners(o[b, :4].detach().numpy())),
                     "labels": c[b].argmax(1), "scores": c[b].amax(1)}
                    for o, c, b in zip(out, conf, best)]

    wrapper = Kept().eval()
    with torch.no_grad():
        kept = wrapper(x)
    targets = [pgc.utils.model_targets.FasterRCNNBoxScoreTarget(
        [int(k["labels"][1])], [k["boxes"][1].numpy()]) for k in kept]
    ours = []
    with torch.no_grad():
        out = net(x).numpy()
    for i, k in enumerate(kept):
        box = int(np.flatnonzero(np.all(np.isclose(corners(out[i, :, :4]),
                                                   k["boxes"][1].numpy()), axis=1))[0])
        ours.append(Detection(box, int(k["labels"][1]), objectness=True))
    ref = pgc.GradCAM(model=wrapper, target_layers=[net.backbone[1]])(
        input_tensor=x, targets=targets)
    res = exp.explain(x.numpy(), targets=ours, layers="backbone.1")
    np.testing.assert_allclose(res.cam(), ref, atol=1e-3)


def test_eigencam_on_a_detector_needs_no_target():
    from references import pytorch_grad_cam
    pgc = pytorch_grad_cam()
    net, x, exp = yolo()
    res = exp.explain(x.numpy(), layers="backbone.3", methods="eigencam")
    with torch.no_grad():
        acts = net.backbone(x).numpy()
    projection = pgc.utils.svd_on_activations.get_2d_projection(acts)
    raw = res.raw("eigencam", "backbone.3")
    for i in range(2):  # pytorch-grad-cam keeps LAPACK's sign; onnx-cam orients it
        assert any(np.allclose(raw[i], np.maximum(s * projection[i], 0), atol=1e-4)
                   for s in (1, -1))


# ------------------------------------------------------------------------- two-output graphs
class TinyDetr(nn.Module):
    """DETR-like: per query (here: per cell) class logits and a box, two outputs."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.logits = nn.Linear(16, classes + 1)
        self.boxes = nn.Linear(16, 4)

    def forward(self, x):
        tokens = self.backbone(x).flatten(2).transpose(1, 2)   # (N, 16, 16)
        return self.logits(tokens), torch.sigmoid(self.boxes(tokens))


def test_detr_outputs_box_matched_in_the_other_output():
    torch.manual_seed(5)
    net = TinyDetr().eval()
    x = torch.randn(2, 3, 16, 16)
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["x"],
                      output_names=["pred_logits", "pred_boxes"], opset_version=17)
    exp = onnx_cam.Explainer(buffer.getvalue(), output="pred_logits")
    with torch.no_grad():
        _, boxes = net(x)
    query = [3, 11]
    target = [Detection(tuple(corners(boxes[i, q].numpy())), cls=1, layout="detr",
                        boxes="pred_boxes", iou_threshold=0.99) for i, q in enumerate(query)]
    ref = autograd(net, x, ["backbone.3"],
                      lambda out: out[0][torch.arange(2), query, 1])
    check_maps(exp, x, target, {"/backbone/backbone.3/Relu_output_0": ref["backbone.3"]})


def _with_nms(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The yolo model (N, boxes, 4 + 1 + classes) followed by NonMaxSuppression on its boxes
    (centre format) and class scores, and a Gather of the selected rows."""
    graph = proto.graph
    out = graph.output[0].name
    consts = {"s0": [0], "s4": [4], "s5": [5], "big": [1 << 30], "ax": [2],
              "keep": [10]}
    for name, value in consts.items():
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], value))
    for name, value in {"iou": 0.5, "thr": 0.0}.items():
        graph.initializer.append(helper.make_tensor(name, TensorProto.FLOAT, [1], [value]))
    graph.node.extend([
        helper.make_node("Slice", [out, "s0", "s4", "ax"], ["boxes"]),
        helper.make_node("Slice", [out, "s5", "big", "ax"], ["cls"]),
        helper.make_node("Transpose", ["cls"], ["cls_t"], perm=[0, 2, 1]),
        helper.make_node("NonMaxSuppression", ["boxes", "cls_t", "keep", "iou", "thr"],
                         ["selected"], center_point_box=1),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("selected", TensorProto.INT64, ["M", 3]))
    return proto


def test_graph_with_nms_is_cut_before_it():
    net, x, exp = yolo()
    buffer = io.BytesIO()
    exp.save_model(buffer)
    with pytest.warns(UserWarning, match="NonMaxSuppression.*layout='detr'"):
        cut = onnx_cam.Explainer(_with_nms(onnx.load_from_string(buffer.getvalue())))
    with torch.no_grad():
        out = net(x).numpy()
    box, cls = 20, 1
    ref = autograd(net, x, ["backbone.3"], lambda o: o[:, box, 5 + cls])
    target = Detection(tuple(corners(out[0, box, :4])), cls=cls, layout="detr",
                       iou_threshold=0.99)
    res = cut.explain(x[:1].numpy(), targets=target, layers="backbone.3")
    pre, _ = ref_gradcam(*ref["backbone.3"])
    assert_close(res.raw(), np.maximum(pre[:1], 0), "gradcam below NMS")


# ---------------------------------------------------------------------------------- errors
def test_bad_dense_targets_are_refused():
    _, x, seg = unet(2)
    xs = x.numpy()
    with pytest.raises(onnx_cam.TargetError, match=r"spatial axes \(16, 16\)"):
        seg.explain(xs, targets=Segmentation(1, np.ones((8, 8), bool)))
    with pytest.raises(onnx_cam.TargetError, match="out of range"):
        seg.explain(xs, targets=Segmentation(3))
    with pytest.raises(onnx_cam.TargetError, match="Segmentation"):
        seg.explain(xs, targets=1)
    with pytest.raises(onnx_cam.TargetError, match="eigencam"):
        seg.explain(xs)
    with pytest.raises(onnx_cam.TargetError, match="score='logits'"):
        seg.explain(xs, targets=Segmentation(1), score="probs")
    with pytest.raises(onnx_cam.TargetError, match="foils"):
        seg.explain(xs, targets=Segmentation(1), foils=0)
    with pytest.raises(onnx_cam.MethodError, match="aug_smooth and sess"):
        seg.explain(xs, targets=Segmentation(1), aug_smooth=True)
    with pytest.raises(onnx_cam.TargetError, match="not all zero"):
        seg.explain(xs, targets=Segmentation(1, np.zeros((16, 16))))
    _, x, det = yolo()
    xs = x.numpy()
    with pytest.raises(onnx_cam.TargetError, match="out of range.*80 candidate"):
        det.explain(xs, targets=Detection(80, 0))
    with pytest.raises(onnx_cam.TargetError, match="out of range"):
        det.explain(xs, targets=Detection(0, 4, objectness=True))
    with pytest.raises(onnx_cam.TargetError, match="IoU"):
        det.explain(xs, targets=Detection((500.0, 500.0, 510.0, 510.0)))
    with pytest.raises(onnx_cam.TargetError, match="layout"):
        det.explain(xs, targets=Detection(0, 0, layout="ssd"))
    with pytest.raises(onnx_cam.MethodError, match="linearised"):
        det.explain(xs, targets=Detection(0, 0, objectness=True), methods="scorecam")
    from conftest import export_bytes, small_cnn
    torch.manual_seed(0)
    classifier = small_cnn(2)
    x = torch.randn(2, 2, 16, 16)
    exp = onnx_cam.Explainer(export_bytes(classifier, x))
    with pytest.raises(onnx_cam.TargetError, match="cannot be a segmentation"):
        exp.explain(x.numpy(), targets=Segmentation(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NMS: no warning
        onnx_cam.Explainer(export_bytes(classifier, x))


# -------------------------------------------------------------------------------------- CLI
def test_cli_explains_a_class_over_a_mask_file(tmp_path, capsys):
    from torch_zoo import ref_upsampled_minmax

    from onnx_cam.cli import EXIT_OK, EXIT_USAGE, main
    net, x, exp = unet(2)
    exp.save_model(tmp_path / "unet.onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    mask = np.zeros((16, 16), bool)
    mask[3:12, 6:15] = True
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "unet.onnx"), str(tmp_path / "x.npy"), "--out",
                 str(out), "--target", "1", "--mask", str(tmp_path / "mask.npy"),
                 "--layer", "dec1"]) == EXIT_OK
    assert "explained 2 items" in capsys.readouterr().out
    ref = autograd(net, x, ["dec1"], lambda o: (o[:, 1] * torch.from_numpy(mask)).sum((1, 2)))
    cams, _ = ref_upsampled_minmax(np.maximum(ref_gradcam(*ref["dec1"])[0], 0), (16, 16))
    res = onnx_cam.Explanation.load(out / "cams.npz")
    np.testing.assert_allclose(res.cam(), cams, atol=1e-3)
    assert res.logits.shape == (2, 3, 16, 16)
    assert main(["explain", str(tmp_path / "unet.onnx"), str(tmp_path / "x.npy"), "--out",
                 str(out), "--mask", "pred", "--quiet"]) == EXIT_USAGE
    assert "--mask needs --target" in capsys.readouterr().err


def test_dynamic_length_output_follows_the_input():
    from conftest import export_bytes
    net, x, _ = unet(1)
    exp = onnx_cam.Explainer(export_bytes(net, x, dynamic_axes={
        "input": {0: "N", 2: "T"}, "output": {0: "N", 2: "T"}}))
    longer = torch.randn(2, 2, 48)
    mask = np.zeros(48, bool)
    mask[10:30] = True
    ref = autograd(net, longer, ["dec1"], lambda o: (o[:, 0] * torch.from_numpy(mask)).sum(1))
    res = exp.explain(longer.numpy(), targets=Segmentation(0, mask),
                      layers="/dec1/dec1.1/Relu_output_0")
    assert res.logits.shape == (2, 3, 48)
    assert_close(res.raw(), np.maximum(ref_gradcam(*ref["dec1"])[0], 0), "gradcam at T=48")


def test_cli_explains_a_box(tmp_path, capsys):
    from torch_zoo import ref_upsampled_minmax

    from onnx_cam.cli import EXIT_OK, main
    net, x, exp = yolo()
    exp.save_model(tmp_path / "yolo.onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "yolo.onnx"), str(tmp_path / "x.npy"), "--out",
                 str(out), "--box", "70", "--target", "1", "--objectness", "--layer",
                 "backbone.3", "--quiet"]) == EXIT_OK
    ref = autograd(net, x, ["backbone.3"], lambda o: o[:, 70, 6] * o[:, 70, 4])
    cams, _ = ref_upsampled_minmax(np.maximum(ref_gradcam(*ref["backbone.3"])[0], 0), (32, 32))
    np.testing.assert_allclose(onnx_cam.Explanation.load(out / "cams.npz").cam(), cams,
                               atol=1e-3)
