"""Quantization-aware training (QAT): fine-tune with simulated int8, then export QDQ int8.

Following Jacob et al. (CVPR 2018, "Quantization and training of neural networks for
efficient integer-arithmetic-only inference", section 3) and Krishnamoorthi (2018, section
3.2): every Conv-BN-(ReLU6) is trained with BN folded into the weights it quantizes,

    w_q = fakequant_per_channel(w * gamma / sigma_running)
    y   = BN_batch(conv(x, w_q) / (gamma / sigma_running))     before the BN freeze
    y   = conv(x, w_q) + (beta - mu_running * gamma / sigma_running)   after it

so the network learns weights that survive per-channel rounding. Activations are
fake-quantized (uint8, asymmetric, moving-average min/max observers) where the QDQ graph
quantizes them: after every Conv-BN-act, after every residual addition, and the input.
After `freeze_bn_after` epochs the BatchNorm statistics stop updating, and after
`freeze_observers_after` epochs the activation ranges are frozen, so the last epochs
fine-tune against exactly the quantization grid that inference uses. ReLU6 stays a clamp.

The trained float weights then go through the same portable path as post-training
quantization (`quant.ptq`): BN folded, ONNX exported and verified, QDQ int8 with per-channel
symmetric weights (the grid QAT trained on) and activation ranges calibrated on the same
images the observers saw. torch 2.14 no longer ships `torch.ao` PT2E QAT (moved to torchao),
which is why the fake quantization here is two small modules built on
`torch.fake_quantize_per_{tensor,channel}_affine` (straight-through gradients).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobilenetv2.errors import UserError
from mobilenetv2.model.layers import ConvBNAct, ResidualAdd
from mobilenetv2.quant.ptq import (
    QuantizeResult,
    fp32_int8_paths,
    labelled_arrays,
    measure,
    quantize_onnx,
)

__all__ = ["ActFakeQuant", "QATConvBNAct", "prepare_qat", "quantize_qat", "set_qat_state",
           "strip_qat"]

log = logging.getLogger(__name__)


class ActFakeQuant(nn.Module):
    """uint8 asymmetric fake quantization with a moving-average min/max observer."""

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.observe = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe and self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
                if torch.isinf(self.min_val):
                    self.min_val.copy_(lo)
                    self.max_val.copy_(hi)
                else:
                    self.min_val.lerp_(lo, self.momentum)
                    self.max_val.lerp_(hi, self.momentum)
        if torch.isinf(self.min_val):
            return x
        scale = float((self.max_val - self.min_val).clamp(min=1e-8) / 255)
        zero = int(torch.round(-self.min_val / scale).clamp(0, 255))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def _fq_weight(w: torch.Tensor) -> torch.Tensor:
    """int8 symmetric per-output-channel fake quantization (what the QDQ export uses)."""
    scale = (w.detach().abs().amax(dim=(1, 2, 3)) / 127).clamp(min=1e-12).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class QATConvBNAct(nn.Module):
    """A `ConvBNAct` trained with BN folded into fake-quantized weights (module docstring).

    It keeps the child names `pad`, `conv`, `bn`, `act`, so its state dict maps 1:1 back
    to the float model.
    """

    def __init__(self, cba: ConvBNAct) -> None:
        super().__init__()
        if hasattr(cba, "pad"):
            self.pad = cba.pad
        self.conv: nn.Conv2d = cba.conv
        self.bn: nn.BatchNorm2d = cba.bn
        if hasattr(cba, "act"):
            self.act = cba.act
        self.out_fq = ActFakeQuant()
        self.bn_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "pad"):
            x = self.pad(x)
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = _fq_weight(conv.weight * scale.reshape(-1, 1, 1, 1))
        y = F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        if self.bn_frozen or not self.training:
            y = y + (bn.bias - bn.running_mean * scale).reshape(1, -1, 1, 1)
        else:
            y = bn(y / scale.reshape(1, -1, 1, 1))
        if hasattr(self, "act"):
            y = self.act(y)
        return self.out_fq(y)


class _QATAdd(ResidualAdd):
    def __init__(self) -> None:
        super().__init__()
        self.out_fq = ActFakeQuant()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out_fq(x + y)


class _InputFQ(nn.Module):
    def __init__(self, stem: nn.Module) -> None:
        super().__init__()
        self.in_fq = ActFakeQuant()
        self.inner = stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.in_fq(x))


def prepare_qat(model: nn.Module) -> nn.Module:
    """Swap every `ConvBNAct` and `ResidualAdd` of `model` (in place) for its QAT version."""
    for name, child in list(model.named_children()):
        if isinstance(child, ConvBNAct):
            setattr(model, name, QATConvBNAct(child))
        elif isinstance(child, ResidualAdd):
            setattr(model, name, _QATAdd())
        else:
            prepare_qat(child)
    if hasattr(model, "stem") and not isinstance(model.stem, _InputFQ):
        model.stem = _InputFQ(model.stem)
    return model


def set_qat_state(model: nn.Module, *, freeze_bn: bool, freeze_observers: bool) -> None:
    for m in model.modules():
        if isinstance(m, QATConvBNAct):
            m.bn_frozen = freeze_bn
        if isinstance(m, ActFakeQuant):
            m.observe = not freeze_observers


def strip_qat(qat_model: nn.Module, config: Any) -> nn.Module:
    """The float MobileNetV2 holding the QAT-trained parameters and BN statistics."""
    from mobilenetv2.model import MobileNetV2

    plain = MobileNetV2(config)
    state = {}
    for k, v in qat_model.state_dict().items():
        if "_fq." in k:
            continue
        state[k.replace("stem.inner.", "stem.")] = v
    plain.load_state_dict(state, strict=True)
    return plain.eval()


def quantize_qat(
    model: nn.Module,
    out: str | os.PathLike,
    data: str | os.PathLike,
    *,
    epochs: int = 3,
    freeze_bn_after: int = 1,
    freeze_observers_after: int = 2,
    lr: float = 1e-4,
    batch_size: int = 32,
    calib_images: int = 256,
    train_images: int | None = None,
    eval_data: str | os.PathLike | None = None,
    progress: bool = True,
    seed: int = 0,
) -> QuantizeResult:
    """Fine-tune `model` with fake quantization, then export QDQ int8 (see module doc).

    Args:
        model: Float MobileNetV2 with `.meta` (preprocessing, labels).
        out: Output path; `STEM.fp32.onnx` (the QAT-trained float model) and
            `STEM.int8.onnx` are written beside it.
        data: Labelled training images: "digits" (its train split) or an ImageFolder
            directory whose class folders are named as the weights' labels.
        epochs: Fine-tuning epochs.
        freeze_bn_after: Epochs after which BatchNorm statistics are frozen.
        freeze_observers_after: Epochs after which activation ranges are frozen.
        lr: AdamW learning rate (fine-tuning: small).
        train_images: Fine-tune on at most this many images (spread over the set).
        eval_data: Where fp32/int8 top-1 are measured (default digits test when training on
            digits).

    Returns:
        A `QuantizeResult` with method "qat".
    """
    from tqdm import tqdm

    from mobilenetv2.export.onnx import export_onnx
    from mobilenetv2.weights.format import meta_or_default

    for name, value in (("epochs", epochs), ("freeze_bn_after", freeze_bn_after),
                        ("freeze_observers_after", freeze_observers_after)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    meta = meta_or_default(model)
    x, y = labelled_arrays(data, meta.preprocessing, split="train", labels=meta.labels,
                            limit=train_images)
    if y is None:
        raise UserError(f"{data}: QAT needs labelled images (ImageFolder layout: one folder "
                        f"per class, named as the weights' labels)")
    import copy

    gen = torch.Generator().manual_seed(seed)
    qat = prepare_qat(copy.deepcopy(model).float())
    opt = torch.optim.AdamW([p for p in qat.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        set_qat_state(qat, freeze_bn=epoch >= freeze_bn_after,
                      freeze_observers=epoch >= freeze_observers_after)
        qat.train()
        perm = torch.randperm(len(xt), generator=gen)
        bar = tqdm(range(0, len(xt), batch_size), desc=f"QAT epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for i in bar:
            idx = perm[i:i + batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(qat(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    trained = strip_qat(qat, model.config)
    trained.meta = meta
    float_path, int8_path = fp32_int8_paths(out)
    export_onnx(trained, float_path, input_size=meta.preprocessing.crop)
    calib = x[np.linspace(0, len(x) - 1, min(calib_images, len(x))).astype(int)]
    quantize_onnx(float_path, int8_path, calib)
    result = QuantizeResult(float_path, int8_path, "qat", len(calib))
    if eval_data is None and str(data) == "digits":
        eval_data = "digits"
    if eval_data is not None:
        measure(result, eval_data, meta.preprocessing, meta.labels)
    return result
