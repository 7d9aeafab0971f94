"""Exact architecture arithmetic: parameters, multiply-adds, shapes, activation memory.

A pure function of the resolved specs (no module is built). Multiply-adds follow the paper
and the official checkpoint table: every convolution and the classifier, counted as
multiply-accumulates (Table 3 / Figure 5 count 300M for width 1.0 at 224x224). Two parameter
conventions are reported:

* `params`: every trainable parameter, BatchNorm scale and shift included (torchvision's
  3,504,872 for width 1.0 with 1000 classes);
* `weights_excluding_bn`: convolution kernels and the classifier's weight and bias, as the
  official TF-slim checkpoint table counts (3.47M for width 1.0 with 1001 classes).

Activation memory is the size of each layer's output at fp32 and batch 1; the peak is the
largest input + output of a single operator, the quantity paper section 5 minimises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.arch import resolve

__all__ = ["LayerProfile", "Profile", "profile"]

BYTES_PER_ELEMENT = 4  # fp32


@dataclass(frozen=True)
class LayerProfile:
    """One operator of the network."""

    name: str
    op: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    kernel: int
    stride: int
    groups: int
    params: int
    weights_excluding_bn: int
    madds: int

    @property
    def activation_bytes(self) -> int:
        c, h, w = self.out_shape
        return c * h * w * BYTES_PER_ELEMENT


@dataclass(frozen=True)
class Profile:
    """Totals and the per-layer table for one `ModelConfig` at one resolution."""

    config: ModelConfig
    resolution: int
    layers: tuple[LayerProfile, ...] = field(repr=False)
    # A detector's anchors per prediction layer: (tap, height, width, boxes per position).
    anchors: tuple[tuple[str, int, int, int], ...] = ()

    @property
    def num_anchors(self) -> int:
        return sum(h * w * k for _, h, w, k in self.anchors)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def weights_excluding_bn(self) -> int:
        return sum(layer.weights_excluding_bn for layer in self.layers)

    @property
    def madds(self) -> int:
        return sum(layer.madds for layer in self.layers)

    @property
    def peak_activation_bytes(self) -> int:
        """Largest input + output of one operator (paper section 5, Table 3 convention)."""
        return max(
            (_numel(layer.in_shape) + _numel(layer.out_shape)) * BYTES_PER_ELEMENT
            for layer in self.layers
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "resolution": self.resolution,
            "params": self.params,
            "weights_excluding_bn": self.weights_excluding_bn,
            "madds": self.madds,
            "peak_activation_bytes": self.peak_activation_bytes,
            **({"anchors": [list(a) for a in self.anchors], "num_anchors": self.num_anchors}
               if self.anchors else {}),
            "layers": [
                {**asdict(layer), "activation_bytes": layer.activation_bytes}
                for layer in self.layers
            ],
        }


def profile(config: ModelConfig, resolution: int | None = None) -> Profile:
    """Per-layer and total arithmetic of `config` at `resolution` (default: the config's)."""
    res = config.resolution if resolution is None else resolution
    if isinstance(res, bool) or not isinstance(res, int) or res < config.min_input_size:
        raise ValueError(
            f"resolution {res!r} is smaller than this network allows "
            f"(at least {config.min_input_size})"
        )
    arch = resolve(config)
    layers: list[LayerProfile] = []
    shape = (3, res, res)

    def conv(name: str, cout: int, k: int, stride: int, groups: int = 1,
             bias: bool = False) -> None:
        nonlocal shape
        # The last row's output (a detector's "tap" rows restart from a feature map).
        cin, h, w = layers[-1].out_shape if layers else shape
        # With (k-1)/2*d padding (symmetric) or TF SAME, the output side is ceil(in/stride).
        out = (cout, -(-h // stride), -(-w // stride))
        weights = k * k * (cin // groups) * cout
        # A conv with a bias (SSDLite's predictors) has no BatchNorm after it.
        extra = cout if bias else 0
        layers.append(
            LayerProfile(
                name=name,
                op="conv_dw" if groups > 1 else "conv",
                in_shape=shape,
                out_shape=out,
                kernel=k,
                stride=stride,
                groups=groups,
                params=weights + (extra or 2 * cout),  # + bias, or BatchNorm gamma and beta
                weights_excluding_bn=weights + extra,
                madds=weights * out[1] * out[2],
            )
        )
        shape = out

    conv("stem", arch.stem_channels, 3, arch.stem_stride)
    for b in arch.blocks:
        if b.has_expand:
            conv(f"blocks.{b.index}.expand", b.hidden_channels, 1, 1)
        conv(f"blocks.{b.index}.depthwise", b.hidden_channels, 3, b.stride, b.hidden_channels)
        conv(f"blocks.{b.index}.project", b.out_channels, 1, 1)
    if config.task == "segment":
        layers += _deeplab_head(config, shape, res)
        return Profile(config=config, resolution=res, layers=tuple(layers))
    conv("head", arch.head_channels, 1, 1)
    if config.task == "detect":
        return _ssdlite(config, res, layers, conv)

    c = shape[0]
    layers.append(LayerProfile("pool", "avgpool", shape, (c, 1, 1), 0, 1, 1, 0, 0, 0))
    n = arch.num_classes
    layers.append(
        LayerProfile(
            name="classifier",
            op="linear",
            in_shape=(c, 1, 1),
            out_shape=(n, 1, 1),
            kernel=1,
            stride=1,
            groups=1,
            params=c * n + n,
            weights_excluding_bn=c * n + n,
            madds=c * n,
        )
    )
    return Profile(config=config, resolution=res, layers=tuple(layers))


def _deeplab_head(
    config: ModelConfig, shape: tuple[int, int, int], res: int
) -> list[LayerProfile]:
    """Mobile DeepLabv3's head (model/heads/deeplabv3.py) on the last block's output: no
    1x1 conv to 1280 (the paper's "MNet V2*", Table 7); the upsampling has no MAdds."""
    from mobilenetv2.model.heads.deeplabv3 import HEAD_CHANNELS, aspp_rates

    cin, h, w = shape
    c, n = HEAD_CHANNELS, config.num_classes
    pooled = (cin, 1, 1)

    def layer(name: str, op: str, i: tuple[int, int, int], o: tuple[int, int, int], k: int,
              bias: bool = False) -> LayerProfile:
        weights = k * k * i[0] * o[0] + (o[0] if bias else 0)
        return LayerProfile(name, op, i, o, k, 1, 1,
                            params=weights + (0 if bias else 2 * o[0]),
                            weights_excluding_bn=weights, madds=k * k * i[0] * o[0] * o[1] * o[2])

    out = [
        LayerProfile("head.pool", "avgpool", shape, pooled, 0, 1, 1, 0, 0, 0),
        layer("head.image_pool", "conv", pooled, (c, 1, 1), 1),
        layer("head.aspp0", "conv", shape, (c, h, w), 1),
    ]
    rates = aspp_rates(config)
    out += [layer(f"head.aspp.{i}", "conv", shape, (c, h, w), 3) for i in range(len(rates))]
    out += [
        layer("head.project", "conv", (c * (2 + len(rates)), h, w), (c, h, w), 1),
        layer("head.logits", "conv", (c, h, w), (n, h, w), 1, bias=True),
        LayerProfile("upsample", "resize", (n, h, w), (n, res, res), 0, 1, 1, 0, 0, 0),
    ]
    return out


def _ssdlite(config: ModelConfig, res: int, layers: list[LayerProfile], conv: Any) -> Profile:
    """SSDLite's extra layers and separable prediction heads (paper section 6.2, Table 6)
    after the backbone's head conv; the closure `conv` reads the last layer's output shape,
    so each head starts from a copy of its map's shape appended as a zero-cost tap."""
    from mobilenetv2.model.heads.ssdlite_arch import (
        EXTRA_LAYER_DEPTHS,
        FEATURE_TAPS,
        boxes_per_location,
        extra_depth,
    )

    by_name = {layer.name: layer.out_shape for layer in layers}
    maps = [(name, by_name[name]) for name in FEATURE_TAPS]
    for i, depth in enumerate(EXTRA_LAYER_DEPTHS):
        d = extra_depth(depth, config.width)
        conv(f"extras.{i}.0", d // 2, 1, 1)
        conv(f"extras.{i}.1", d // 2, 3, 2, d // 2)
        conv(f"extras.{i}.2", d, 1, 1)
        maps.append((f"extras.{i}", layers[-1].out_shape))
    anchors = []
    for i, ((name, shape), k) in enumerate(zip(maps, boxes_per_location())):
        c, h, w = shape
        anchors.append((name, h, w, k))
        for head, outputs in (("box_heads", 4 * k), ("class_heads", config.num_classes * k)):
            # A zero-cost "tap" row resets the running shape to this map's.
            layers.append(LayerProfile(f"{head}.{i}.input", "tap", shape, shape, 0, 1, 1,
                                       0, 0, 0))
            conv(f"{head}.{i}.depthwise", c, 3, 1, c)
            conv(f"{head}.{i}.predict", outputs, 1, 1, bias=True)
    return Profile(config=config, resolution=res, layers=tuple(layers), anchors=tuple(anchors))


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
