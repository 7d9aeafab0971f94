"""Depthwise 3x3 convolutions of a MobileNetV2 training step: torch's, ours
(`mobilenetv2.model.dwconv`, issue 14) and their memory-bound floor.

For every depthwise layer of MobileNetV2 (width, resolution, batch as given; channels_last
fp32, torch's threads), the time of torch's own path (oneDNN via aten::mkldnn_convolution on
an AVX2 CPU) and of our kernel for the forward (`F.conv2d`) and for the backward
(`aten.convolution_backward`, input and weight gradients), against a floor: the bytes a
single-pass kernel must move (forward: read x, write y; backward: read x, read dy, write dx)
divided by the bandwidth of `clone()` of the same input tensor (read + write), measured in the
same run. Each figure is
the median of `--reps` calls, the five measurements interleaved per repetition.

    python bench/train_dw_ab.py                       # MobileNetV2 1.0, 224x224, batch 32
    python bench/train_dw_ab.py --batch 8 --reps 5    # quicker
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from mobilenetv2 import MobileNetV2, ModelConfig
from mobilenetv2.model import bnact
from mobilenetv2.runtime.cpu import cpu_info
from mobilenetv2.train.malloc import retain_freed_memory


def depthwise_shapes(width: float, size: int) -> list[tuple[int, int, int, int]]:
    """(channels, height, width, stride) of every depthwise conv's input, in network order."""
    model = MobileNetV2(ModelConfig(width=width, resolution=size, num_classes=1000)).eval()
    shapes: list[tuple[int, int, int, int]] = []

    def hook(mod: nn.Conv2d, inp: tuple[torch.Tensor]) -> None:
        _, c, h, w = inp[0].shape
        shapes.append((c, h, w, mod.stride[0]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            m.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return shapes


def timed(fn, reps: list[float]) -> None:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    reps.append((time.perf_counter() - t0) * 1e3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    note = retain_freed_memory()
    info = cpu_info()
    isa = "avx512f" if "avx512f" in info.flags else "avx2+fma" if "fma" in info.flags else "sse"
    print(f"CPU: {info.model} ({isa}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {note}; {bnact.describe()}")
    ours = bnact.AVAILABLE
    nt = torch.get_num_threads()
    cl = torch.channels_last
    rows = []
    for c, h, w, s in depthwise_shapes(args.width, args.size):
        x = torch.randn(args.batch, c, h, w).to(memory_format=cl)
        wt = torch.randn(c, 1, 3, 3)
        y = F.conv2d(x, wt, None, s, 1, 1, c)
        dy = torch.randn_like(y)
        g = (x.shape[0], h, w, c, y.shape[2], y.shape[3], s, 1, 1)
        yo, dx, dw = torch.empty_like(y), torch.empty_like(x), torch.empty_like(wt)
        fwd, bwd, cp, ofwd, obwd = [], [], [], [], []
        for _ in range(args.reps + 1):
            timed(lambda: F.conv2d(x, wt, None, s, 1, 1, c), fwd)  # noqa: B023
            timed(lambda: torch.ops.aten.convolution_backward(  # noqa: B023
                dy, x, wt, None, [s, s], [1, 1], [1, 1], False, [0, 0], c,  # noqa: B023
                [True, True, False]), bwd)
            timed(lambda: x.clone(), cp)  # noqa: B023
            if ours:
                timed(lambda: bnact._bnact.dw_forward(  # noqa: B023
                    x.data_ptr(), wt.data_ptr(), yo.data_ptr(), 0, 0, *g, nt), ofwd)  # noqa: B023
                timed(lambda: bnact._bnact.dw_backward(  # noqa: B023
                    x.data_ptr(), wt.data_ptr(), dy.data_ptr(), dx.data_ptr(),  # noqa: B023
                    dw.data_ptr(), *g, nt), obwd)  # noqa: B023
        fwd, bwd, cp = (statistics.median(v[1:]) for v in (fwd, bwd, cp))
        ofwd, obwd = (statistics.median(v[1:]) if v else float("nan") for v in (ofwd, obwd))
        xb, yb = x.numel() * 4, y.numel() * 4
        bw = 2 * xb / cp  # bytes per ms
        rows.append((c, h, w, s, fwd, bwd, (xb + yb) / bw, (2 * xb + yb) / bw, xb, bw, ofwd,
                     obwd))
    print(f"MobileNetV2 {args.width} {args.size}x{args.size} batch {args.batch} channels_last "
          f"fp32; ms (median of {args.reps}); floor = bytes moved / clone() bandwidth")
    print(f"{'C':>5} {'HxW':>9} {'s':>2} {'x MB':>7} {'GB/s':>6} | forward: {'torch':>6} "
          f"{'ours':>6} {'floor':>6} | backward: {'torch':>6} {'ours':>6} {'floor':>6}")
    for c, h, w, s, f, b, ff, fb, xb, bw, of, ob in rows:
        print(f"{c:5d} {h:4d}x{w:<4d} {s:2d} {xb / 1e6:7.1f} {bw / 1e6:6.1f} |          "
              f"{f:6.1f} {of:6.1f} {ff:6.1f} |           {b:6.1f} {ob:6.1f} {fb:6.1f}")
    tf, tb, ff, fb = (sum(r[i] for r in rows) for i in (4, 5, 6, 7))
    of, ob = sum(r[10] for r in rows), sum(r[11] for r in rows)
    print(f"total ms: forward torch {tf:.0f}, ours {of:.0f}, floor {ff:.0f} (torch {tf / ff:.2f}x "
          f"the floor, ours {of / ff:.2f}x); backward torch {tb:.0f}, ours {ob:.0f}, floor "
          f"{fb:.0f} (torch {tb / fb:.2f}x, ours {ob / fb:.2f}x); inputs "
          f"{sum(r[8] for r in rows) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
