"""The native fused inverted-residual engine (issue 13): MobileNetV2 fp32 in one C++ call.

Each inverted residual runs as one operator (paper section 5.1): per output row and per
channel slice of the expansion, the 1x1 expand + ReLU6 of just the input rows the 3x3
depthwise needs (a small ring of rows), the depthwise + ReLU6, and that slice's share of the
linear 1x1 projection added into the output (with the shortcut). The 6x-wide expanded tensor
never exists whole: the working memory is the two bottleneck tensors plus a few rows. The
stem plays block 0's expansion (Table 3's first-layer trick), the head conv is summed into
the global pool row by row, and the classifier follows, so a forward never returns to Python
between layers.

Built by the project's install (setup.py, optional): where it did not build, `AVAILABLE` is
False and `UNAVAILABLE` says why in one line; the `native` backend is then not ready and
`auto` races without it. The kernels are compiled for AVX-512F, AVX2+FMA and the SSE2
baseline in one binary and chosen at run time (`isa=` forces one the CPU has).

    engine = NativeEngine(model, threads=2)   # model: our MobileNetV2 classifier
    logits = engine(x)                        # x: float32 (N, 3, H, W)
    engine.memory_bytes                       # peak working memory of the last call
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2.errors import UserError

__all__ = ["AVAILABLE", "UNAVAILABLE", "NativeEngine", "checked_batch", "cpu_isas",
           "default_threads"]

try:
    from mobilenetv2.runtime.native import _engine  # type: ignore[attr-defined]
except ImportError as exc:  # not built (no compiler at install time) or a broken build
    _engine = None
    UNAVAILABLE = (f"the native backend is unavailable ({exc}); it is built by `pip install "
                   f"-e .` with a C++17 compiler; PyTorch and the other backends still run")
else:
    UNAVAILABLE = ""
AVAILABLE = _engine is not None


def cpu_isas() -> list[str]:
    """ISAs the engine can run on this CPU, widest first ("avx512", "avx2", "generic")."""
    return list(_engine.cpu_isas()) if _engine is not None else []


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _folded(seq: nn.Module, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a ConvBNAct with its BatchNorm folded in, as float32 arrays."""
    from mobilenetv2.model.fuse import fold_conv_bn

    conv, bn = seq.conv, getattr(seq, "bn", nn.Identity())
    if isinstance(bn, nn.BatchNorm2d):
        conv = fold_conv_bn(conv, bn)
    elif not isinstance(bn, nn.Identity):
        raise UserError(f"the native backend cannot run {what}: {type(bn).__name__} is not "
                        f"a BatchNorm")
    w = conv.weight.detach().float().contiguous().numpy()
    b = (conv.bias.detach().float().numpy() if conv.bias is not None
         else np.zeros(conv.out_channels, np.float32))
    return np.ascontiguousarray(w), np.ascontiguousarray(b)


def _check_act(seq: nn.Module, what: str, relu6: bool) -> None:
    act = getattr(seq, "act", None)
    ok = isinstance(act, nn.ReLU6) if relu6 else act is None
    if not ok:
        raise UserError(f"the native backend runs MobileNetV2's ReLU6 layers; {what} has "
                        f"{type(act).__name__ if act is not None else 'no activation'}")


def _geometry(conv: nn.Conv2d, what: str) -> tuple[int, int]:
    if conv.kernel_size not in ((3, 3),) or len(set(conv.stride)) != 1 or len(
            set(conv.dilation)) != 1 or conv.padding_mode != "zeros":
        raise UserError(f"the native backend runs square 3x3 convolutions; {what} is not one")
    return conv.stride[0], conv.dilation[0]


def _spec(model: nn.Module) -> tuple[tuple, tuple, tuple, bool]:
    """The classifier flattened into the C++ engine's arguments (`_engine.cpp` Engine)."""
    from mobilenetv2.model.classifier import MobileNetV2

    if not isinstance(model, MobileNetV2):
        raise UserError(f"the native backend runs the MobileNetV2 classifier, not "
                        f"{type(model).__name__} (segmentation and detection run on torch)")
    padding = model.config.padding
    if padding not in ("symmetric", "tf_same"):
        raise UserError(f"the native backend cannot run padding {padding!r}")
    blocks = list(model.blocks)
    if blocks[0].spec.has_expand:
        raise UserError("the native backend fuses the stem into a t=1 first block; this "
                        "network's first block expands")
    spec = []
    for i, blk in enumerate(blocks):
        s = blk.spec
        dw_w, dw_b = _folded(blk.depthwise, f"blocks.{i}.depthwise")
        _check_act(blk.depthwise, f"blocks.{i}.depthwise", True)
        stride, dil = _geometry(blk.depthwise.conv, f"blocks.{i}.depthwise")
        pw_w, pw_b = _folded(blk.project, f"blocks.{i}.project")
        _check_act(blk.project, f"blocks.{i}.project", False)
        we = be = ws = bs = None
        s_stride = s_dil = 1
        if i == 0:
            kind, cin = 0, 3
            ws, bs = _folded(model.stem, "the stem")
            _check_act(model.stem, "the stem", True)
            s_stride, s_dil = _geometry(model.stem.conv, "the stem")
        elif s.has_expand:
            kind, cin = 1, s.in_channels
            we, be = _folded(blk.expand, f"blocks.{i}.expand")
            _check_act(blk.expand, f"blocks.{i}.expand", True)
        else:
            kind, cin = 2, s.in_channels
        ints = (kind, cin, s.hidden_channels, s.out_channels, stride, dil,
                int(bool(blk.use_residual)), s_stride, s_dil)
        spec.append((ints, (we, be, ws, bs, dw_w, dw_b, pw_w, pw_b)))
    hw, hb = _folded(model.head, "the head conv")
    _check_act(model.head, "the head conv", True)
    head = (model.head.conv.in_channels, model.head.conv.out_channels, hw, hb)
    fc = model.classifier
    fc_w = np.ascontiguousarray(fc.weight.detach().float().numpy())
    fc_b = np.ascontiguousarray(fc.bias.detach().float().numpy() if fc.bias is not None
                                else np.zeros(fc.out_features, np.float32))
    return tuple(spec), head, (fc.out_features, fc_w, fc_b), padding == "tf_same"


def checked_batch(x: Any, engine: str) -> np.ndarray:
    """`x` as the float32 (N, 3, H, W) numpy batch both native engines take (a CPU tensor is
    converted); anything else is a one-line UserError naming `engine`."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise UserError(f"{engine} takes a numpy float32 array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise UserError(f"{engine} runs float32 input, got {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise UserError(f"expected an image batch of shape (N, 3, H, W), got {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise UserError("the batch is empty")
    return x


class NativeEngine:
    """MobileNetV2 classifier inference on the native fused engine (module docstring).

    Args:
        model_or_weights: Our MobileNetV2 classifier (BatchNorm folded here if it is not
            yet), or a `--weights` spec (`mobilenetv2.weights.load_weights`).
        threads: Threads the forward runs on, honoured exactly (default: every usable core).
            Batch 1 splits each layer's output rows over them; a batch of at least `threads`
            images gives each thread whole images.
        isa: "avx512", "avx2" or "generic" (default: the widest this CPU runs).

    Raises:
        UserError: The engine is not built, the ISA is missing, or the network is not one
            it runs (one line saying which).
    """

    def __init__(self, model_or_weights: nn.Module | str | os.PathLike,
                 threads: int | None = None, isa: str | None = None) -> None:
        if _engine is None:
            raise UserError(UNAVAILABLE)
        model = model_or_weights
        if not isinstance(model, nn.Module):
            from mobilenetv2.weights import load_weights

            model = load_weights(model)
        threads = default_threads() if threads is None else threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UserError(f"threads must be an integer >= 1, got {threads!r}")
        isas = cpu_isas()
        isa = isa or isas[0]
        if isa not in isas:
            raise UserError(f"this CPU cannot run the native engine's {isa} kernels "
                            f"(it runs: {', '.join(isas)})")
        with torch.no_grad():
            blocks, head, fc, tf_same = _spec(model.eval())
        self.threads, self.isa = threads, isa
        self.num_classes = fc[0]
        self.min_input_size = int(getattr(model, "min_input_size", 1))
        self._engine = _engine.Engine(blocks, head, fc, threads, isa, tf_same)

    @property
    def memory_bytes(self) -> int:
        """Working memory the engine holds after its last forward (activations and scratch,
        not weights nor the caller's input): the measured side of `memory.py`'s block-wise
        figure."""
        return int(self._engine.memory_bytes())

    def profile(self, x: np.ndarray) -> list[float]:
        """Seconds each fused block takes, then the head + pool + classifier, for one image
        (batch 1; every thread meets at a barrier after each, so these are wall times)."""
        self(x)  # checks the input, plans the shape, allocates
        out = np.empty((1, self.num_classes), np.float32)
        ends = self._engine.run(np.ascontiguousarray(x), out, True)
        return [b - a for a, b in zip([0.0, *ends[:-1]], ends)]

    def trace(self, x: np.ndarray, handicap_us: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each thread's time goes in one forward of one image: an array (threads,
        blocks + 1, 2) of seconds of work and of waiting at the barrier after each fused
        block and after the head + classifier (bench/native_trace.py); an int array (threads,
        blocks) of the row-slices (one output row's share of one channel slice of the
        expansion) each thread computed in each row-split block (0 in the blocks whose
        threads split channels); and the logits. `handicap_us`: the last thread
        busy-waits that long before each block, as if its core were slower, to see the
        threads rebalance the rows they share."""
        self(x)  # checks the input, plans the shape, allocates
        out = np.empty((1, self.num_classes), np.float32)
        per_thread = self._engine.run(np.ascontiguousarray(x), out, 2, int(handicap_us))
        tr = np.asarray(per_thread, np.float64).reshape(len(per_thread), -1, 3)
        return tr[..., :2], tr[:, :-1, 2].astype(np.int64), out

    def __call__(self, x: Any) -> np.ndarray:
        """Logits (N, classes) float32 for a float32 (N, 3, H, W) batch."""
        x = checked_batch(x, "the native engine")
        if min(x.shape[2:]) < self.min_input_size:
            raise UserError(f"input {x.shape[2]}x{x.shape[3]} is smaller than this network "
                            f"allows (at least {self.min_input_size}x{self.min_input_size})")
        out = np.empty((x.shape[0], self.num_classes), np.float32)
        self._engine.run(np.ascontiguousarray(x), out)
        return out
