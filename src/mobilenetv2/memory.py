"""Peak activation memory of an execution schedule (paper section 5.1, Table 3).

Sandler et al., arXiv 1801.04381, section 5: for a network run one operator at a time, the
memory needed is `max over operators of (sum of live tensors + the operator's scratch)`,
where a tensor is live from the operator that writes it to the last one that reads it. Two
schedules of the classifier (and of Mobile DeepLabv3, whose head runs layer by layer in both)
are modelled, both pure functions of the resolved specs:

* **layer by layer** (`layerwise_schedule`): every convolution (BatchNorm folded, ReLU6 in
  place) writes its whole output; a residual block's input stays live through expand,
  depthwise and project until the add, which writes a new tensor (what eager PyTorch does).
  With `padding="tf_same"` a stride-2 layer first writes a padded copy of its input, as the
  `SamePad2d` module does.
* **block by block** (`blockwise_schedule`, section 5.1): an inverted residual is one
  operator `F(x) = sum_i B_i(N(A_i(x)))` whose expanded tensor is produced and consumed in
  channel slices, so only the bottleneck input and output are ever whole, plus one slice of
  the expansion (its 1x1-expanded part at the input resolution and its depthwise output at
  the output resolution). The paper's `t` in that section is the number of slices, not the
  expansion factor; `slices=None` takes its limit, one channel at a time ("n = t"). The
  stem conv with block 0 (which has no expansion) is treated the same way, with the image
  as its input: the "trick described in section 5" that Table 3 applies to the first layer.
  The head conv with global pooling is one operator as well (each pooled channel needs only
  its own head channel), which is why Table 3's 7x7 row holds 320 channels, not 1280.

The paper's Table 3 figure is the largest single tensor this block-wise schedule
materializes (`Schedule.largest_tensor_elements`): 112x112x16 for width 1.0 at 224x224,
401,408 bytes in 16-bit floats, printed as "400K" (Table 3 writes kilobytes of 1000 bytes to
about two significant digits: 401 KB -> 400K; in KiB it would read 392 -> 390K). Its `max`
row is one tensor, not the operator peak of the formula above, which also counts the
operator's input and output together; both are reported here.

For int8 on a microcontroller, the slice schedule sums the output over slices, so the block
output is an accumulator: `accumulator_bytes=4` holds it in int32 while the block runs (it is
requantized to int8 in place at the end). `microcontroller_ram_bytes` is that int8 peak:
activations only; weights are assumed to stay in flash and are not counted.

Long because the two schedules, the segmenter's head they share and the report reading them
are one job; split, Table 3's conventions would be scattered over several files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.arch import resolve
from mobilenetv2.profile import profile

__all__ = [
    "BYTES",
    "Schedule",
    "Step",
    "blockwise_peak_bytes",
    "blockwise_schedule",
    "layerwise_peak_bytes",
    "layerwise_schedule",
    "memory_grid",
    "memory_report",
    "microcontroller_ram_bytes",
    "per_resolution",
]

# The widths and resolutions of the official checkpoint table (paper Figure 5).
WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
RESOLUTIONS = (96, 128, 160, 192, 224)

# Bytes per activation element of each precision the CLI reports.
BYTES = {"fp32": 4, "fp16": 2, "int8": 1}

Shape = tuple[int, int, int]
Tensor = tuple[str, Shape]  # a named whole tensor: (name, (C, H, W))


@dataclass(frozen=True)
class Step:
    """One operator of a schedule and what occupies memory while it runs.

    Attributes:
        op: The operator (module names, e.g. `blocks.3.expand`, or `blocks.3` for a fused
            block).
        live: `(tensor name, (C, H, W))` of every whole tensor live during the operator: its
            inputs, its output and tensors kept for later operators (a residual's input).
        scratch: `(C, H, W)` pieces of the operator's own storage (one slice of a fused
            block's expansion); empty for a plain layer.
        accumulator: Name of the live tensor the operator accumulates into (a fused block's
            output, a sum over slices), which `accumulator_bytes` may widen.
    """

    op: str
    live: tuple[Tensor, ...]
    scratch: tuple[Shape, ...] = ()
    accumulator: str | None = None

    def bytes(self, bytes_per_element: float, batch: int = 1,
              accumulator_bytes: float | None = None) -> int:
        """Bytes in use while this operator runs."""
        acc = bytes_per_element if accumulator_bytes is None else accumulator_bytes
        total = 0.0
        for name, shape in self.live:
            total += _numel(shape) * (acc if name == self.accumulator else bytes_per_element)
        total += sum(_numel(s) for s in self.scratch) * bytes_per_element
        return int(total * batch)


@dataclass(frozen=True)
class Schedule:
    """An execution order of one network at one input size, and its memory."""

    kind: str
    config: ModelConfig
    resolution: int
    steps: tuple[Step, ...]

    def peak_bytes(self, bytes_per_element: float, batch: int = 1,
                   accumulator_bytes: float | None = None) -> int:
        """The largest `Step.bytes` over the schedule."""
        return max(s.bytes(bytes_per_element, batch, accumulator_bytes) for s in self.steps)

    def peak_step(self, bytes_per_element: float = 4,
                  accumulator_bytes: float | None = None) -> Step:
        """The operator where the peak occurs (the first one, on ties)."""
        return max(self.steps, key=lambda s: s.bytes(bytes_per_element, 1, accumulator_bytes))

    @property
    def tensors(self) -> dict[str, Shape]:
        """Every whole tensor the schedule materializes, by name."""
        return {name: shape for s in self.steps for name, shape in s.live}

    @property
    def largest_tensor_elements(self) -> int:
        """Elements of the largest materialized tensor (Table 3's `max` row, per image)."""
        return max(_numel(s) for s in self.tensors.values())

    def to_dict(self, batch: int = 1) -> dict[str, Any]:
        return {
            "schedule": self.kind,
            "peak_bytes": {p: self.peak_bytes(b, batch) for p, b in BYTES.items()},
            "largest_tensor_elements": self.largest_tensor_elements * batch,
            "steps": [
                {
                    "op": s.op,
                    "live": {name: list(shape) for name, shape in s.live},
                    "scratch": [list(x) for x in s.scratch],
                    "bytes": {p: s.bytes(b, batch) for p, b in BYTES.items()},
                }
                for s in self.steps
            ],
        }


def _shapes(config: ModelConfig, resolution: int | None) -> tuple[int, dict[str, Shape]]:
    if config.task not in ("classify", "segment"):
        raise ValueError(
            f"the memory schedules model the classifier and the segmenter; a {config.task!r} "
            "network's head (SSDLite's feature taps and extra layers) is not modelled yet"
        )
    prof = profile(config, resolution)
    return prof.resolution, {layer.name: layer.out_shape for layer in prof.layers}


def _padded(shape: Shape, stride: int, dilation: int = 1, kernel: int = 3) -> Shape:
    """The copy `SamePad2d` writes before a stride-2 layer under TF SAME padding."""
    c, h, w = shape

    def side(size: int) -> int:
        out = -(-size // stride)
        return size + max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)

    return c, side(h), side(w)


def layerwise_schedule(config: ModelConfig, resolution: int | None = None) -> Schedule:
    """The network run one layer at a time (BatchNorm folded, ReLU6 in place).

    Args:
        config: A classifier or segmenter configuration.
        resolution: Input side (default: the config's).

    Raises:
        ValueError: For a detector, or a resolution the network cannot take.
    """
    res, out = _shapes(config, resolution)
    arch = resolve(config)
    tf_same = config.padding == "tf_same"
    image: Shape = (3, res, res)
    steps: list[Step] = []

    def conv(op: str, x: Tensor, stride: int, keep: tuple[Tensor, ...] = (),
             dilation: int = 1) -> Tensor:
        if tf_same and stride > 1:
            padded = (f"{op}.pad", _padded(x[1], stride, dilation))
            steps.append(Step(f"{op}.pad", (*keep, x, padded)))
            x = padded
        y = (op, out[op])
        steps.append(Step(op, (*keep, x, y)))
        return y

    x = conv("stem", ("input", image), arch.stem_stride)
    for b in arch.blocks:
        name = f"blocks.{b.index}"
        keep = (x,) if b.residual else ()
        h = conv(f"{name}.expand", x, 1) if b.has_expand else x
        # Block 0 has no expand: its input is the depthwise input (kept once, not twice).
        dw_keep = keep if b.has_expand else ()
        h = conv(f"{name}.depthwise", h, b.stride, dw_keep, b.dilation)
        y = conv(f"{name}.project", h, 1, keep)
        if b.residual:
            added = (name, y[1])
            steps.append(Step(f"{name}.add", (x, y, added)))
            y = added
        x = y
    if config.task == "segment":
        steps += _deeplab_steps(x, out)
        return Schedule("layerwise", config, res, tuple(steps))
    x = conv("head", x, 1)
    pooled = ("pool", out["pool"])
    steps.append(Step("pool", (x, pooled)))
    steps.append(Step("classifier", (pooled, ("classifier", out["classifier"]))))
    return Schedule("layerwise", config, res, tuple(steps))


def _deeplab_steps(x: Tensor, out: dict[str, Shape]) -> list[Step]:
    """Mobile DeepLabv3's head (model/heads/deeplabv3.py) layer by layer, in both schedules:
    image pooling, the 1x1 (and atrous) branches, their concatenation, the projection, the
    logits and the upsampling to the input size. The branches all read the last block's
    output, which stays live until the last of them; the pooled branch is broadcast (a
    view), so it stays 1x1."""
    pooled = ("head.pool", out["head.pool"])
    image_pool = ("head.image_pool", out["head.image_pool"])
    steps = [Step("head.pool", (x, pooled)), Step("head.image_pool", (x, pooled, image_pool))]
    branches = [image_pool]
    for name in ["head.aspp0", *sorted((n for n in out if n.startswith("head.aspp.")),
                                       key=lambda n: int(n.rsplit(".", 1)[1]))]:
        y = (name, out[name])
        steps.append(Step(name, (*branches, x, y)))
        branches.append(y)
    _, h, w = out["head.aspp0"]
    cat = ("head.cat", (out["head.project"][0] * len(branches), h, w))
    project = ("head.project", out["head.project"])
    logits = ("head.logits", out["head.logits"])
    return steps + [
        Step("head.cat", (*branches, cat)),
        Step("head.project", (cat, project)),
        Step("head.logits", (project, logits)),
        Step("upsample", (logits, ("upsample", out["upsample"]))),
    ]


def blockwise_schedule(config: ModelConfig, resolution: int | None = None,
                       slices: int | None = None, fuse_stem: bool = True) -> Schedule:
    """The network run one inverted residual at a time, its expansion in channel slices.

    Args:
        config: A classifier or segmenter configuration (a segmenter's head runs layer by
            layer).
        resolution: Input side (default: the config's).
        slices: Channel slices each block's expanded tensor is cut into (the paper's `t` of
            section 5.1, 2-5 being its practical range); None: one channel at a time, the
            paper's bound `|s^2 k| + |s'^2 k'| + O(max(s^2, s'^2))`.
        fuse_stem: Treat the stem conv with block 0 as one such operator (Table 3's "trick
            described in section 5" for the first layer), so the stem's output is never
            whole.
    """
    if slices is not None and (isinstance(slices, bool) or not isinstance(slices, int)
                               or slices < 1):
        raise ValueError(f"slices must be an integer >= 1 or None, got {slices!r}")
    res, out = _shapes(config, resolution)
    arch = resolve(config)
    image: Tensor = ("input", (3, res, res))

    def piece(channels: int, *maps: Shape) -> tuple[Shape, ...]:
        c = 1 if slices is None else -(-channels // min(slices, channels))
        return tuple((c, s[1], s[2]) for s in maps)

    steps: list[Step] = []
    x = image
    blocks = list(arch.blocks)
    if fuse_stem and not blocks[0].has_expand:
        # stem (3x3 conv, ReLU6) -> depthwise -> project: the stem plays the expansion.
        b = blocks.pop(0)
        y = ("blocks.0", out["blocks.0.project"])
        scratch = piece(b.hidden_channels, out["stem"], out["blocks.0.depthwise"])
        steps.append(Step("stem+blocks.0", (x, y), scratch, accumulator="blocks.0"))
        x = y
    else:
        x = ("stem", out["stem"])
        steps.append(Step("stem", (image, x)))
    for b in blocks:
        name = f"blocks.{b.index}"
        y = (name, out[f"{name}.project"])
        dw = out[f"{name}.depthwise"]
        # A t=1 block's depthwise reads its input directly: only the output slice is new.
        maps = (out[f"{name}.expand"], dw) if b.has_expand else (dw,)
        steps.append(Step(name, (x, y), piece(b.hidden_channels, *maps), accumulator=name))
        x = y
    if config.task == "segment":  # the head's layers are not fused: as layer by layer
        steps += _deeplab_steps(x, out)
        return Schedule("blockwise", config, res, tuple(steps))
    # head conv + global average pool: each pooled channel needs its own head channel only.
    pooled = ("pool", out["pool"])
    steps.append(Step("head+pool", (x, pooled), piece(out["head"][0], out["head"])))
    steps.append(Step("classifier", (pooled, ("classifier", out["classifier"]))))
    return Schedule("blockwise", config, res, tuple(steps))


def layerwise_peak_bytes(config: ModelConfig, resolution: int | None = None,
                         bytes_per_element: float = 4, batch: int = 1) -> int:
    """Peak activation bytes of the layer-by-layer schedule (`layerwise_schedule`).

    Args:
        config: A classifier or segmenter configuration.
        resolution: Input side (default: the config's).
        bytes_per_element: 4 for fp32, 2 for fp16/bf16, 1 for int8.
        batch: Images per forward pass (memory scales linearly).
    """
    _check_batch(batch)
    return layerwise_schedule(config, resolution).peak_bytes(bytes_per_element, batch)


def blockwise_peak_bytes(config: ModelConfig, resolution: int | None = None,
                         bytes_per_element: float = 4, batch: int = 1, *,
                         slices: int | None = None, fuse_stem: bool = True,
                         accumulator_bytes: float | None = None) -> int:
    """Peak activation bytes of the paper's block-wise schedule (`blockwise_schedule`).

    The figure an engine that fuses each inverted residual (and streams its expansion) can
    reach: for each fused operator its bottleneck input + output + one expansion slice,
    maximised over the network. A native engine's measured working memory compares to this.

    Args:
        config: A classifier or segmenter configuration.
        resolution: Input side (default: the config's).
        bytes_per_element: 4 for fp32, 2 for fp16/bf16, 1 for int8.
        batch: Images per forward pass (memory scales linearly).
        slices: Channel slices per expansion (None: one channel at a time).
        fuse_stem: Stem and block 0 as one operator (Table 3's first-layer trick).
        accumulator_bytes: Bytes per element of a fused block's output while it sums the
            slices (default `bytes_per_element`; 4 for int8 with int32 partial sums).
    """
    _check_batch(batch)
    return blockwise_schedule(config, resolution, slices, fuse_stem).peak_bytes(
        bytes_per_element, batch, accumulator_bytes)


def microcontroller_ram_bytes(config: ModelConfig, resolution: int | None = None) -> int:
    """The smallest RAM the int8 classifier runs in, block-wise (activations only).

    int8 activations, the fused block's output summed in int32 while its slices run, one
    channel per slice; weights stay in flash and are not counted; no runtime overhead.
    """
    return blockwise_peak_bytes(config, resolution, 1, accumulator_bytes=4)


def per_resolution(schedule: Schedule) -> list[tuple[int, int, int]]:
    """Table 3's view: `(side, channels, elements)` of the largest tensor at each side."""
    best: dict[int, tuple[int, int]] = {}
    for c, h, w in schedule.tensors.values():
        if c * h * w > best.get(h, (0, 0))[1]:
            best[h] = (c, c * h * w)
    return [(side, c, n) for side, (c, n) in sorted(best.items(), reverse=True)]


def memory_report(config: ModelConfig, resolution: int | None = None, batch: int = 1,
                  slices: int | None = None) -> dict[str, Any]:
    """Both schedules of one configuration, in bytes per precision (what `profile --memory`
    prints): peaks, Table 3's largest tensor, the int8 microcontroller RAM, every step."""
    _check_batch(batch)
    layer = layerwise_schedule(config, resolution)
    block = blockwise_schedule(config, resolution, slices)
    big = max(block.tensors.items(), key=lambda kv: _numel(kv[1]))
    return {
        "config": config.to_dict(),
        "resolution": block.resolution,
        "batch": batch,
        "slices": slices,
        "layerwise": {**layer.to_dict(batch), "peak_op": layer.peak_step().op},
        "blockwise": {**block.to_dict(batch), "peak_op": block.peak_step().op},
        "largest_tensor": {
            "name": big[0],
            "shape": list(big[1]),
            "bytes": {p: _numel(big[1]) * b * batch for p, b in BYTES.items()},
        },
        "per_resolution": [
            {"side": side, "channels": c, "fp16_bytes": n * 2 * batch}
            for side, c, n in per_resolution(block)
        ],
        "microcontroller_ram_bytes": block.peak_bytes(1, batch, accumulator_bytes=4),
    }


def memory_grid(base: ModelConfig | None = None, widths: tuple[float, ...] = WIDTHS,
                resolutions: tuple[int, ...] = RESOLUTIONS) -> list[dict[str, Any]]:
    """One row per width and resolution: the peaks of both schedules per precision, Table
    3's largest tensor in fp16 and the int8 microcontroller RAM (one channel per slice)."""
    base = ModelConfig() if base is None else base
    rows = []
    for width in widths:
        for res in resolutions:
            cfg = base.replace(width=width, resolution=res)
            layer, block = layerwise_schedule(cfg), blockwise_schedule(cfg)
            rows.append({
                "width": width,
                "resolution": res,
                "largest_tensor_fp16_bytes": block.largest_tensor_elements * 2,
                "blockwise_bytes": {p: block.peak_bytes(b) for p, b in BYTES.items()},
                "layerwise_bytes": {p: layer.peak_bytes(b) for p, b in BYTES.items()},
                "microcontroller_ram_bytes": block.peak_bytes(1, accumulator_bytes=4),
            })
    return rows


def _check_batch(batch: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")


def _numel(shape: Shape) -> int:
    c, h, w = shape
    return c * h * w
