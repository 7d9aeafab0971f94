"""SSD anchors and box coding exactly as TF's Object Detection API makes them (paper 6.2).

`ssd_anchors` reproduces `anchor_generators/multiple_grid_anchor_generator.py`
(`create_ssd_anchors` + `MultipleGridAnchorGenerator._generate`) and
`grid_anchor_generator.tile_anchors` with the settings of `ssdlite_mobilenet_v2_coco.config`:
6 layers, scales linear from 0.2 to 0.95, aspect ratios 1, 2, 0.5, 3, 0.3333 plus one box at
the geometric mean of this and the next scale, and only 3 boxes (0.1 at 1:1, scale at 2:1
and 1:2) on the lowest layer (`reduce_boxes_in_lowest_layer`). Anchors are normalised
(ymin, xmin, ymax, xmax), ordered (row, column, box) like TF's reshape of NHWC head outputs.

`encode` / `decode` are TF's `FasterRcnnBoxCoder` with scale factors (10, 10, 5, 5) in TF's
order (ty, tx, th, tw), so a head's outputs mean what TF's mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mobilenetv2.model.heads.ssdlite_arch import SSDLITE_ANCHORS, AnchorSpec, box_specs

__all__ = ["AnchorSpec", "BOX_SCALES", "SSDLITE_ANCHORS", "box_specs", "decode", "encode",
           "ssd_anchors"]

# TF's faster_rcnn_box_coder scale factors in ssdlite_mobilenet_v2_coco.config: y, x, h, w.
BOX_SCALES = (10.0, 10.0, 5.0, 5.0)


def ssd_anchors(feature_shapes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                spec: AnchorSpec = SSDLITE_ANCHORS) -> torch.Tensor:
    """Normalised anchors (A, 4) as (ymin, xmin, ymax, xmax) for feature maps of these sizes.

    Args:
        feature_shapes: (height, width) of each prediction layer, finest first.
        image_size: (height, width) of the input; TF shrinks the base anchor of the longer
            side so anchors stay square in pixels on non-square inputs.
    """
    layers = box_specs(spec)
    if len(feature_shapes) != len(layers):
        raise ValueError(f"{len(layers)} anchor layers but {len(feature_shapes)} feature maps")
    im_h, im_w = (float(s) for s in image_size)
    m = min(im_h, im_w)
    base_h, base_w = m / im_h, m / im_w
    out = []
    for (gh, gw), boxes in zip(feature_shapes, layers):
        scales = torch.tensor([s for s, _ in boxes], dtype=torch.float64)
        ratio_sqrts = torch.tensor([ar for _, ar in boxes], dtype=torch.float64).sqrt()
        heights = scales / ratio_sqrts * base_h
        widths = scales * ratio_sqrts * base_w
        # Default stride and offset of MultipleGridAnchorGenerator: 1/grid and half of it.
        sy, sx = 1.0 / gh, 1.0 / gw
        yc = torch.arange(gh, dtype=torch.float64) * sy + 0.5 * sy
        xc = torch.arange(gw, dtype=torch.float64) * sx + 0.5 * sx
        yy, xx = torch.meshgrid(yc, xc, indexing="ij")
        k = len(boxes)
        cy = yy[..., None].expand(gh, gw, k)
        cx = xx[..., None].expand(gh, gw, k)
        h = heights.expand(gh, gw, k)
        w = widths.expand(gh, gw, k)
        out.append(torch.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1).reshape(-1, 4))
    return torch.cat(out).float()


def _center_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    ymin, xmin, ymax, xmax = boxes.unbind(-1)
    return (ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes (..., 4) relative to anchors, both (ymin, xmin, ymax, xmax): (ty, tx, th, tw)."""
    ycenter, xcenter, h, w = _center_size(boxes)
    ycenter_a, xcenter_a, ha, wa = _center_size(anchors)
    # TF avoids log(0) and division by zero with EPSILON = 1e-8.
    ha, wa = ha + 1e-8, wa + 1e-8
    h, w = h + 1e-8, w + 1e-8
    sy, sx, sh, sw = BOX_SCALES
    return torch.stack([(ycenter - ycenter_a) / ha * sy, (xcenter - xcenter_a) / wa * sx,
                        torch.log(h / ha) * sh, torch.log(w / wa) * sw], -1)


def decode(codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The inverse of `encode`: (ty, tx, th, tw) -> (ymin, xmin, ymax, xmax)."""
    ycenter_a, xcenter_a, ha, wa = _center_size(anchors)
    sy, sx, sh, sw = BOX_SCALES
    ty, tx, th, tw = codes.unbind(-1)
    # torchvision's BoxCoder clamp: exp() of an untrained head must not overflow.
    clamp = math.log(1000.0 / 16)
    w = torch.exp((tw / sw).clamp(max=clamp)) * wa
    h = torch.exp((th / sh).clamp(max=clamp)) * ha
    ycenter = ty / sy * ha + ycenter_a
    xcenter = tx / sx * wa + xcenter_a
    return torch.stack([ycenter - h / 2, xcenter - w / 2, ycenter + h / 2, xcenter + w / 2], -1)
