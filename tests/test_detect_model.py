"""SSDLite (paper section 6.2): anchors as TF's ssd_anchor_generator, box coder and matching
against torchvision's implementations, the paper's Table 6 counts, the head layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder, SSDMatcher
from torchvision.ops import box_iou

from mobilenetv2 import create_model
from mobilenetv2.config import ModelConfig
from mobilenetv2.model.heads.anchors import decode, encode, ssd_anchors
from mobilenetv2.model.heads.ssd_loss import match, ssd_loss
from mobilenetv2.model.heads.ssdlite import SSDLite
from mobilenetv2.model.heads.ssdlite_arch import feature_shapes
from mobilenetv2.profile import profile


def _tf_reference_anchors(grids: list[tuple[int, int]]) -> np.ndarray:
    """A line-by-line transcription of TF's object_detection code for the
    ssdlite_mobilenet_v2_coco anchor_generator block (num_layers 6, min_scale 0.2,
    max_scale 0.95, aspect_ratios 1.0 2.0 0.5 3.0 0.3333, defaults otherwise), written from
    multiple_grid_anchor_generator.create_ssd_anchors / _generate and
    grid_anchor_generator.tile_anchors with numpy in place of tf, for a square input."""
    num_layers, min_scale, max_scale = 6, 0.2, 0.95
    aspect_ratios = [1.0, 2.0, 0.5, 3.0, 0.3333]
    scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1)
              for i in range(num_layers)] + [1.0]
    box_specs_list = []
    for layer, scale, scale_next in zip(range(num_layers), scales[:-1], scales[1:]):
        if layer == 0:  # reduce_boxes_in_lowest_layer defaults to true
            layer_box_specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:
            layer_box_specs = [(scale, ar) for ar in aspect_ratios]
            layer_box_specs.append((np.sqrt(scale * scale_next), 1.0))
        box_specs_list.append(layer_box_specs)
    out = []
    for grid, specs in zip(grids, box_specs_list):
        s, ar = (np.array(v, np.float32) for v in zip(*specs))
        stride = (1.0 / np.float32(grid[0]), 1.0 / np.float32(grid[1]))
        offset = (0.5 * stride[0], 0.5 * stride[1])
        ratio_sqrts = np.sqrt(ar)
        heights, widths = s / ratio_sqrts, s * ratio_sqrts
        y_centers = np.arange(grid[0], dtype=np.float32) * stride[0] + offset[0]
        x_centers = np.arange(grid[1], dtype=np.float32) * stride[1] + offset[1]
        x_centers, y_centers = np.meshgrid(x_centers, y_centers)        # ops.meshgrid
        widths_grid, x_centers_grid = np.meshgrid(widths, x_centers)
        heights_grid, y_centers_grid = np.meshgrid(heights, y_centers)
        # ops.meshgrid(x, y) has shape y.shape + x.shape; numpy flattens y: reshape back
        shape = (grid[0], grid[1], len(specs))
        centers = np.stack([y_centers_grid.reshape(shape), x_centers_grid.reshape(shape)], 3)
        sizes = np.stack([heights_grid.reshape(shape), widths_grid.reshape(shape)], 3)
        centers, sizes = centers.reshape(-1, 2), sizes.reshape(-1, 2)
        out.append(np.concatenate([centers - 0.5 * sizes, centers + 0.5 * sizes], 1))
    return np.concatenate(out)


@pytest.mark.parametrize(("size", "count"), [(300, 1917), (320, 2034)])
def test_anchors_equal_tf_ssd_anchor_generator(size: int, count: int) -> None:
    # 1917 is the box count of every TF SSD-MobileNet at 300x300 (the TFLite detection
    # models' 1917 x 4 raw outputs); 320 gives the paper's grids 20, 10, 5, 3, 2, 1.
    grids = feature_shapes(size, size)
    assert grids == ([(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)] if size == 300
                     else [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)])
    ours = ssd_anchors(grids, (size, size)).numpy()
    assert ours.shape == (count, 4)
    np.testing.assert_allclose(ours, _tf_reference_anchors(grids), atol=1e-6)
    # Spot values from the formulas by hand: first box of layer 0 is 0.1 x 0.1 at the first
    # cell centre; layer 1's last box is the interpolated scale sqrt(0.35 * 0.5).
    c = 0.5 / grids[0][0]
    np.testing.assert_allclose(ours[0], [c - 0.05, c - 0.05, c + 0.05, c + 0.05], atol=1e-6)
    first_l1 = grids[0][0] * grids[0][1] * 3
    s = math.sqrt(0.35 * 0.5)
    assert ours[first_l1 + 5, 2] - ours[first_l1 + 5, 0] == pytest.approx(s, abs=1e-6)


def test_network_anchor_count_matches_its_outputs() -> None:
    model = SSDLite(ModelConfig(width=0.35, task="detect", num_classes=5)).eval()
    for h, w in ((300, 300), (320, 320), (160, 224)):
        codes, logits = model(torch.randn(1, 3, h, w))
        assert codes.shape == (1, len(model.anchors(h, w)), 4)
        assert logits.shape == (1, len(model.anchors(h, w)), 5)


def test_box_coder_is_torchvisions_with_tf_order() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=g) * 100], 1)   # x1 y1 x2 y2
    anchors = torch.cat([xy + 3, xy + 40 + torch.rand(50, 2, generator=g) * 60], 1)
    yx = [1, 0, 3, 2]
    ours = encode(boxes[:, yx], anchors[:, yx])
    theirs = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode_single(boxes, anchors)
    torch.testing.assert_close(ours[:, yx], theirs, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(decode(ours, anchors[:, yx])[:, yx], boxes, atol=1e-3,
                               rtol=1e-5)


def test_matching_is_argmax_at_half_iou_and_forces_every_ground_truth() -> None:
    g = torch.Generator().manual_seed(1)
    anchors = ssd_anchors(feature_shapes(128, 128), (128, 128))
    for _ in range(5):
        xy = torch.rand(6, 2, generator=g) * 0.8
        gt = torch.cat([xy, xy + 0.02 + torch.rand(6, 2, generator=g) * 0.2], 1)
        ours = match(gt, anchors)
        theirs = SSDMatcher(0.5)(box_iou(gt, anchors))
        assert torch.equal(ours, theirs)
        assert set(ours[ours >= 0].tolist()) == set(range(6))   # every box has an anchor
    # a tiny box overlapping no anchor by 0.5 is still matched, to its best anchor
    tiny = torch.tensor([[0.50, 0.50, 0.51, 0.51]])
    m = match(tiny, anchors)
    assert box_iou(tiny, anchors).max() < 0.5 and (m == 0).sum() == 1
    assert m.argmax() == box_iou(tiny, anchors).argmax()


def test_loss_mines_three_negatives_per_positive() -> None:
    anchors = ssd_anchors(feature_shapes(128, 128), (128, 128))
    a = len(anchors)
    codes = torch.zeros(1, a, 4)
    logits = torch.zeros(1, a, 3)
    target = [{"boxes": torch.tensor([[32.0, 32.0, 96.0, 96.0]]), "labels": torch.tensor([2])}]
    loss, parts = ssd_loss(codes, logits, target, anchors, (128, 128))
    pos = int(parts["positives"])
    # uniform logits: every anchor's cross-entropy is log(3); positives + 3x as many negatives
    assert parts["class"] == pytest.approx(math.log(3) * (pos + 3 * pos) / pos, rel=1e-5)
    _, focal = ssd_loss(codes, logits, target, anchors, (128, 128), focal=True)
    assert focal["class"] == pytest.approx((2 / 3) ** 2 * math.log(3) * a / pos, rel=1e-5)


def test_table6_parameters_and_multiply_adds() -> None:
    # Paper Table 6, MNetV2 + SSDLite: 4.3M parameters, 0.8B multiply-adds at 320x320, on
    # COCO (80 classes + background).
    cfg = create_model("ssdlite_mobilenetv2_100", num_classes=81).config
    prof = profile(cfg, 320)
    assert round(prof.params / 1e6, 1) == 4.3
    assert round(prof.madds / 1e9, 1) == 0.8
    assert prof.num_anchors == 2034
    # the pure arithmetic agrees with the real modules and torch's FLOP counter
    model = create_model("ssdlite_mobilenetv2_100", num_classes=81).eval()
    assert sum(p.numel() for p in model.parameters()) == prof.params
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 320, 320))
    assert counter.get_total_flops() // 2 == prof.madds


def test_module_names_and_backbone_shared_with_the_classifier() -> None:
    det = create_model("ssdlite_mobilenetv2_050", num_classes=11)
    cls = create_model("mobilenetv2_050")
    det_keys, cls_keys = set(det.state_dict()), set(cls.state_dict())
    backbone = {k for k in cls_keys if not k.startswith("classifier.")}
    assert backbone <= det_keys                  # classification weights load unchanged
    assert "extras.0.1.conv.weight" in det_keys  # the depthwise stride-2 conv
    assert det.extras[0][1].conv.groups == det.extras[0][1].conv.in_channels
    assert "box_heads.0.depthwise.conv.weight" in det_keys
    assert det.box_heads[0].depthwise.conv.groups == 288        # blocks.13.expand at 0.5
    assert det.class_heads[1].predict.out_channels == 6 * 11    # 6 boxes x classes
    assert det.channels == (288, 1280, 256, 128, 128, 64)


def test_detect_returns_torchvision_format() -> None:
    model = create_model("ssdlite_mobilenetv2_050", num_classes=4).eval()
    out = model.detect(torch.randn(2, 3, 96, 128), score_threshold=0.0, max_detections=7)
    assert len(out) == 2
    for d in out:
        assert set(d) == {"boxes", "labels", "scores"}
        assert d["boxes"].shape == (7, 4) and d["labels"].dtype == torch.int64
        assert (d["labels"] >= 1).all() and (d["labels"] <= 3).all()
        assert (d["boxes"][:, 2] <= 128).all() and (d["boxes"][:, 3] <= 96).all()


def test_backbone_from_classification_weights(tmp_path) -> None:
    from mobilenetv2.tasks.detect import build_detector
    from mobilenetv2.train.recipes import make_config
    from mobilenetv2.weights.format import save

    cls = create_model("mobilenetv2_035", num_classes=10)
    path = tmp_path / "cls.safetensors"
    save(cls, path)
    cfg = make_config("detect-demo", train={"weights": str(path)}, out=str(tmp_path / "r"))
    assert cfg.model.task == "detect" and cfg.model.width == 0.35
    det = build_detector(cfg, 11)
    assert det.config.task == "detect" and det.num_classes == 11
    for key, value in cls.state_dict().items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(det.state_dict()[key], value, rtol=0, atol=0)
