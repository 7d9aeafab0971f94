"""SSDLite on MobileNetV2 (paper section 6.2, Table 6; TF's `ssdlite_mobilenet_v2_coco`).

The backbone's taps `blocks.13.expand` (TF-slim `layer_15/expansion_output`, 576 channels,
stride 16) and `head` (`layer_19`, 1280 channels, stride 32) feed two prediction layers; four
extra layers (1x1 conv to half depth, 3x3 depthwise stride 2, 1x1 conv to 512, 256, 256,
128; all BN + ReLU6) add strides 64 to 512. SSDLite replaces SSD's regular 3x3 prediction
convs with separable ones (section 6.2: "replace all the regular convolutions with separable
convolutions (depthwise followed by 1x1 projection) in SSD prediction layers"): each of the
six maps gets a 3x3 depthwise + BN + ReLU6 and a 1x1 conv with bias, separately for box
offsets and class scores, as TF's ConvolutionalBoxPredictor with `use_depthwise: true`.

`forward` returns the raw head outputs (box codes (N, A, 4) in TF's (ty, tx, th, tw) order and
class logits (N, A, num_classes), index 0 = background); `detect` adds decoding and NMS and
returns torchvision's detection format. The backbone's module names are the classifier's, so
classification weights load into it unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.backbone import MobileNetV2Backbone
from mobilenetv2.model.heads.anchors import ssd_anchors
from mobilenetv2.model.heads.ssdlite_arch import (
    EXTRA_LAYER_DEPTHS,
    FEATURE_TAPS,
    boxes_per_location,
    extra_depth,
    feature_shapes,
)
from mobilenetv2.model.layers import ConvBNAct

__all__ = ["SSDLite", "check_detector_config"]


def check_detector_config(cfg: ModelConfig) -> None:
    """SSDLite taps strides 16 and 32 of an unmodified backbone."""
    if cfg.output_stride != 32 or cfg.small_input:
        raise ValueError("SSDLite needs the backbone at output_stride 32 without small_input "
                         f"(got output_stride={cfg.output_stride}, small_input="
                         f"{cfg.small_input})")
    if cfg.num_classes < 2:
        raise ValueError(f"a detector needs num_classes >= 2 (background + at least one "
                         f"class), got {cfg.num_classes}")


def _extra_layer(cin: int, depth: int, norm: dict) -> nn.Sequential:
    mid = depth // 2
    return nn.Sequential(
        ConvBNAct(cin, mid, 1, **norm),
        ConvBNAct(mid, mid, 3, stride=2, groups=mid, **norm),
        ConvBNAct(mid, depth, 1, **norm),
    )


class _PredictionHead(nn.Sequential):
    """3x3 depthwise + BN + ReLU6, then a 1x1 conv with bias (TF's SSDLite box predictor)."""

    def __init__(self, channels: int, outputs: int, norm: dict) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(channels, channels, 3, groups=channels, **norm)
        self.predict = nn.Conv2d(channels, outputs, 1)


class SSDLite(MobileNetV2Backbone):
    """`SSDLite(ModelConfig(task="detect", num_classes=91, resolution=320))`."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        config = config if config is not None else ModelConfig(task="detect", num_classes=91,
                                                               resolution=320)
        check_detector_config(config)
        super().__init__(config)
        cfg = self.config
        norm = {"bn_eps": cfg.bn_eps, "bn_momentum": cfg.bn_momentum, "padding": cfg.padding}
        by_name = {f.name: f for f in self.feature_info}
        channels = [by_name[n].channels for n in FEATURE_TAPS]
        self.extras = nn.ModuleList()
        for depth in EXTRA_LAYER_DEPTHS:
            d = extra_depth(depth, cfg.width)
            self.extras.append(_extra_layer(channels[-1], d, norm))
            channels.append(d)
        self.num_classes = cfg.num_classes
        k = boxes_per_location()
        self.box_heads = nn.ModuleList(_PredictionHead(c, n * 4, norm)
                                       for c, n in zip(channels, k))
        self.class_heads = nn.ModuleList(_PredictionHead(c, n * cfg.num_classes, norm)
                                         for c, n in zip(channels, k))
        self.channels = tuple(channels)
        self._init_new_layers()
        self._anchor_cache: dict[tuple[int, int], torch.Tensor] = {}

    def _init_new_layers(self) -> None:
        # TF's SSD hyperparams: truncated normal, stddev 0.03 (torchvision's SSDLite: normal
        # 0.03 for these layers too); the backbone keeps its own initialisation.
        for part in (self.extras, self.box_heads, self.class_heads):
            for m in part.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.trunc_normal_(m.weight, std=0.03, a=-0.06, b=0.06)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        # Prior of 1% per object class, as TF's class_prediction_bias_init -4.6 gives its
        # sigmoid scores: with softmax, a background logit log(0.99 (C - 1) / 0.01) above
        # the others. Keeps the first steps of hard-negative or focal training sane.
        c = self.num_classes
        for head in self.class_heads:
            bias = head.predict.bias.data.view(-1, c)
            bias[:, 0] = math.log(0.99 * (c - 1) / 0.01)

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six prediction maps, finest first."""
        maps = self.forward_taps(x, FEATURE_TAPS)
        y = maps[-1]
        for layer in self.extras:
            y = layer(y)
            maps.append(y)
        return maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W) -> box codes (N, A, 4) and class logits (N, A, num_classes)."""
        boxes, logits = [], []
        for fmap, box_head, class_head in zip(self.forward_maps(x), self.box_heads,
                                              self.class_heads):
            n = fmap.shape[0]
            # NHWC then flatten: anchors ordered (row, column, box) as TF's reshape.
            boxes.append(box_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, 4))
            logits.append(class_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
        return torch.cat(boxes, 1), torch.cat(logits, 1)

    def anchors(self, height: int, width: int) -> torch.Tensor:
        """Normalised anchors (A, 4), (ymin, xmin, ymax, xmax), for an input of this size."""
        key = (int(height), int(width))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = ssd_anchors(feature_shapes(*key), key)
        return self._anchor_cache[key]

    @torch.no_grad()
    def detect(self, x: torch.Tensor, score_threshold: float = 0.01, iou_threshold: float = 0.6,
               max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
        """torchvision's detection format: per image a dict of `boxes` (x1, y1, x2, y2 in
        input pixels), `labels` (1.. num_classes - 1) and `scores`."""
        from mobilenetv2.model.heads.ssd_post import postprocess

        codes, logits = self(x)
        anchors = self.anchors(*x.shape[-2:]).to(x.device)
        return postprocess(codes, logits, anchors, tuple(x.shape[-2:]), score_threshold,
                           iou_threshold, max_detections)
