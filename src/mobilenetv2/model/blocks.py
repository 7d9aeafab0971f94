"""The inverted residual block with linear bottleneck (paper section 3.3, Table 1).

    input (thin) -> 1x1 expand + BN + ReLU6 -> 3x3 depthwise + BN + ReLU6
                 -> 1x1 project + BN (linear: no activation, section 3.2) -> (+ input)

The shortcut connects the thin bottlenecks, and only when stride is 1 and the channel count is
unchanged. Blocks with expansion factor t = 1 have no expand conv.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilenetv2.model.arch import BlockSpec
from mobilenetv2.model.layers import ConvBNAct, ResidualAdd

__all__ = ["InvertedResidual"]


class InvertedResidual(nn.Module):
    """One bottleneck block built from its resolved `BlockSpec`."""

    def __init__(
        self,
        spec: BlockSpec,
        padding: str = "symmetric",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.spec = spec
        norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum, "padding": padding}
        hidden = spec.hidden_channels
        self.expand: nn.Module = (
            ConvBNAct(spec.in_channels, hidden, kernel_size=1, **norm)
            if spec.has_expand
            else nn.Identity()
        )
        self.depthwise = ConvBNAct(
            hidden,
            hidden,
            kernel_size=3,
            stride=spec.stride,
            dilation=spec.dilation,
            groups=hidden,
            **norm,
        )
        # Linear bottleneck (section 3.2): ReLU on the thin projection would destroy
        # information, so the projection has no activation.
        self.project = ConvBNAct(hidden, spec.out_channels, kernel_size=1, act=None, **norm)
        self.use_residual = spec.residual
        self.add = ResidualAdd() if spec.residual else None

    def forward_with_expansion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and the expansion output (the tap SSDLite attaches to)."""
        expanded = self.expand(x)
        out = self.project(self.depthwise(expanded))
        if self.add is not None:
            out = self.add(x, out)
        return out, expanded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if self.add is not None:
            out = self.add(x, out)
        return out

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"in={s.in_channels}, hidden={s.hidden_channels}, out={s.out_channels}, "
            f"t={s.expand_ratio}, stride={s.stride}, dilation={s.dilation}, "
            f"residual={s.residual}"
        )
