"""SSDLite's architecture as data (paper section 6.2; TF's `ssdlite_mobilenet_v2_coco`).

Pure (no torch), so `profile` can count the detector without building it. The network
(`ssdlite.py`), the anchors (`anchors.py`) and the profiler all read these constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AnchorSpec", "EXTRA_LAYER_DEPTHS", "FEATURE_TAPS", "MIN_DEPTH", "SSDLITE_ANCHORS",
           "box_specs", "boxes_per_location", "extra_depth", "feature_shapes"]

# TF's ssd_mobilenet_v2_feature_extractor feature_map_layout: from_layer
# ['layer_15/expansion_output', 'layer_19', '', '', '', ''] -> our taps (blocks.13.expand is
# TF-slim's layer_15 expansion, 576 channels at stride 16; head is layer_19, 1280 at 32) ...
FEATURE_TAPS = ("blocks.13.expand", "head")
# ... and layer_depth [-1, -1, 512, 256, 256, 128]: four extra layers, each a 1x1 conv to
# half the depth, a 3x3 depthwise stride-2 conv and a 1x1 conv to the depth.
EXTRA_LAYER_DEPTHS = (512, 256, 256, 128)
# TF's feature extractor: depth_fn(d) = max(int(d * depth_multiplier), min_depth=16).
MIN_DEPTH = 16


def extra_depth(depth: int, width: float) -> int:
    """Channels of an extra layer of nominal `depth` at width multiplier `width`."""
    return max(int(depth * width), MIN_DEPTH)


def feature_shapes(height: int, width: int, tap_strides: tuple[int, ...] = (16, 32)
                   ) -> list[tuple[int, int]]:
    """(h, w) of the six prediction maps: every stride-2 layer (3x3, symmetric padding or TF
    SAME) gives ceil(n / 2), so a map at stride s has side ceil(n / s)."""
    strides = list(tap_strides)
    while len(strides) < len(tap_strides) + len(EXTRA_LAYER_DEPTHS):
        strides.append(strides[-1] * 2)
    shapes = []
    for s in strides:
        h, w = height, width
        for _ in range(int(math.log2(s))):
            h, w = -(-h // 2), -(-w // 2)
        shapes.append((h, w))
    return shapes


@dataclass(frozen=True)
class AnchorSpec:
    """`ssd_anchor_generator` of TF's pipeline config (its field names and defaults)."""

    num_layers: int = 6
    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 0.3333)
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = True


SSDLITE_ANCHORS = AnchorSpec()


def box_specs(spec: AnchorSpec = SSDLITE_ANCHORS) -> list[list[tuple[float, float]]]:
    """(scale, aspect ratio) of each box per layer: TF's `create_ssd_anchors`."""
    n = spec.num_layers
    scales = [spec.min_scale + (spec.max_scale - spec.min_scale) * i / (n - 1)
              for i in range(n)] + [1.0]
    layers = []
    for layer, (scale, scale_next) in enumerate(zip(scales[:-1], scales[1:])):
        if layer == 0 and spec.reduce_boxes_in_lowest_layer:
            boxes = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:
            boxes = [(scale, ar) for ar in spec.aspect_ratios]
            if spec.interpolated_scale_aspect_ratio > 0.0:
                boxes.append((math.sqrt(scale * scale_next),
                              spec.interpolated_scale_aspect_ratio))
        layers.append(boxes)
    return layers



def boxes_per_location(spec: AnchorSpec = SSDLITE_ANCHORS) -> tuple[int, ...]:
    """Anchors at each position of each layer: (3, 6, 6, 6, 6, 6) for SSDLite."""
    return tuple(len(b) for b in box_specs(spec))
