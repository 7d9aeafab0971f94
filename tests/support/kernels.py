"""Shared by the training kernels' tests (test_fused_bn.py, test_fused_dw.py): the ISAs the
`_bnact` extension can be switched to, and a call counter for the Python entry points."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mobilenetv2.model import bnact


def kernel_isas() -> list[str]:
    """The ISA this CPU runs and the portable build: both paths are tested on any machine."""
    if not bnact.AVAILABLE:
        return []
    return sorted({bnact._bnact.isa(), "generic"})


@contextmanager
def kernel_isa(name: str) -> Iterator[str]:
    prev = bnact._bnact.set_isa(name)
    try:
        yield name
    finally:
        bnact._bnact.set_isa(prev)


def count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Replace `module.name` by a wrapper that counts its calls (n[0]); both kernels' off
    switches are cleared so the kernels may run."""
    n = [0]
    real = getattr(module, name)

    def spy(*a: Any, **k: Any) -> Any:
        n[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(module, name, spy)
    monkeypatch.delenv("MOBILENETV2_FUSED_BN", raising=False)
    monkeypatch.delenv("MOBILENETV2_FUSED_DW", raising=False)
    return n


def digits_loss_curve(monkeypatch: pytest.MonkeyPatch, switch: str, on: bool,
                      dtype: Any) -> Any:
    """Five SGD steps of a digits-style network (width 0.35, small_input, 32x32, dropout off
    so runs compare exactly), channels_last, with the kernel that `switch` names on or off;
    the losses in float64."""
    import torch
    import torch.nn.functional as F

    from mobilenetv2 import MobileNetV2, ModelConfig

    monkeypatch.setenv(switch, "1" if on else "0")
    torch.manual_seed(5)
    model = MobileNetV2(ModelConfig(width=0.35, small_input=True, resolution=32,
                                    num_classes=10, dropout=0.0)).train()
    model = model.to(dtype=dtype, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 3, 32, 32, generator=g).to(dtype=dtype, memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), generator=g)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)
