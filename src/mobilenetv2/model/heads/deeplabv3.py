"""Mobile DeepLabv3 on MobileNetV2 (paper section 6.3, Table 7).

The network TF's `research/deeplab` builds for `model_variant=mobilenet_v2`
(core/feature_extractor.py, model.py `extract_features`):

    MobileNetV2 up to the last inverted residual block (320 channels at width 1; the 1x1
    conv to 1280 is not used: the paper's "MNet V2*"), output stride 16 (or 8) by dilation
      -> image-level branch: global average pool -> 1x1 conv 256 -> BN -> ReLU
         -> bilinear upsample back to the feature size ("image_pooling")
      -> parallel 1x1 conv 256 -> BN -> ReLU ("aspp0")
      -> optional ASPP: three 3x3 atrous convs 256 -> BN -> ReLU, rates 6/12/18 at output
         stride 16, 12/24/36 at 8 ("aspp1".."aspp3"; DeepLabv3, Chen et al. 2017)
      -> concatenate [image pool, aspp0, aspp1..3] (TF's order) -> 1x1 conv 256 -> BN -> ReLU
         ("concat_projection") -> dropout (keep 0.9 in TF, so rate 0.1)
      -> 1x1 conv to the classes, with bias ("logits/semantic")
      -> bilinear upsampling to the input size with `align_corners=True`, as TF does (the
         513x513 crop makes 33 -> 513 an exact x16 grid).

The head uses ReLU (not ReLU6), as DeepLab's `aspp_with_batch_norm` arg scope does. The
depth multiplier is DeepLab's through the config: `round_nearest=1` for widths other than 1
(feature_extractor.py passes `divisible_by=1, min_depth=1`), so width 0.5 has
16/8/12/16/32/48/80/160 channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.arch import resolve
from mobilenetv2.model.backbone import MobileNetV2Features, feature_info_for
from mobilenetv2.model.layers import ConvBNAct

__all__ = [
    "ASPP_RATES", "HEAD_CHANNELS", "DeepLabV3", "DeepLabV3Head", "aspp_rates",
    "with_output_stride",
]

# `depth = 256` in model.py's extract_features.
HEAD_CHANNELS = 256
# DeepLab's `atrous_rates` for output stride 16; doubled at 8 (its README's flags).
ASPP_RATES = (6, 12, 18)


def aspp_rates(cfg: ModelConfig) -> tuple[int, ...]:
    """The atrous rates of the ASPP branches `cfg` asks for (none without ASPP)."""
    if not cfg.aspp:
        return ()
    return tuple(r * 16 // cfg.output_stride for r in ASPP_RATES)


class DeepLabV3Head(nn.Module):
    """Image pooling + 1x1 branch (+ ASPP), projection, dropout, logits (paper section 6.3)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: tuple[int, ...] = (),
        dropout: float = 0.1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum, "act": nn.ReLU}
        c = HEAD_CHANNELS
        self.pool = nn.AdaptiveAvgPool2d(1)  # ONNX GlobalAveragePool
        self.image_pool = ConvBNAct(in_channels, c, 1, **norm)
        self.aspp0 = ConvBNAct(in_channels, c, 1, **norm)
        self.aspp = nn.ModuleList(
            ConvBNAct(in_channels, c, 3, dilation=r, **norm) for r in rates
        )
        self.project = ConvBNAct(c * (2 + len(rates)), c, 1, **norm)
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Conv2d(c, num_classes, 1, bias=True)
        nn.init.normal_(self.logits.weight, 0, 0.01)
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Bilinear upsampling of a 1x1 map (align_corners=True) is a broadcast.
        pooled = self.image_pool(self.pool(x)).expand(-1, -1, x.shape[-2], x.shape[-1])
        branches = [pooled, self.aspp0(x)] + [conv(x) for conv in self.aspp]
        return self.logits(self.dropout(self.project(torch.cat(branches, dim=1))))


class DeepLabV3(nn.Module):
    """Mobile DeepLabv3: `DeepLabV3(ModelConfig(task="segment", output_stride=16, ...))`.

    `forward` returns per-pixel class logits (N, classes, H, W) at the input's size.
    `backbone` holds the classifier's parameter names (`backbone.stem`, `backbone.blocks.*`),
    so ImageNet weights load into it directly.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else ModelConfig(task="segment", output_stride=16)
        if cfg.output_stride == 32:
            raise ValueError("Mobile DeepLabv3 runs at output_stride 16 or 8 (paper section "
                             "6.3); got 32")
        self.config = cfg
        last = [f for f in feature_info_for(resolve(cfg)) if f.kind == "block"][-1]
        self.backbone = MobileNetV2Features(cfg, out_features=(last.name,))
        self.head = DeepLabV3Head(
            last.channels, cfg.num_classes, aspp_rates(cfg), cfg.dropout, cfg.bn_eps,
            cfg.bn_momentum,
        )
        # Weights' metadata (preprocessing, labels, provenance); set by the loaders.
        self.meta = None

    @property
    def num_classes(self) -> int:
        return self.head.logits.out_channels

    @property
    def min_input_size(self) -> int:
        return self.config.min_input_size

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the output stride (N, classes, H/os, W/os): what the loss upsamples."""
        return self.head(self.backbone(x)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def reset_classifier(self, num_classes: int) -> None:
        """New logits conv for `num_classes` (fine-tuning); the config follows."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.config = self.config.replace(num_classes=num_classes)
        old = self.head.logits
        self.head.logits = nn.Conv2d(old.in_channels, num_classes, 1, bias=True,
                                     device=old.weight.device)
        nn.init.normal_(self.head.logits.weight, 0, 0.01)
        nn.init.zeros_(self.head.logits.bias)


def with_output_stride(model: DeepLabV3, output_stride: int) -> DeepLabV3:
    """The same weights at another output stride (DeepLab evaluates at 8 what it trained at
    16): only dilations and ASPP rates change, so the state dict carries over unchanged."""
    if output_stride == model.config.output_stride:
        return model
    other = DeepLabV3(model.config.replace(output_stride=output_stride))
    other.load_state_dict(model.state_dict())
    other.meta = model.meta
    p = next(model.parameters())
    return other.to(device=p.device, dtype=p.dtype).train(model.training)
