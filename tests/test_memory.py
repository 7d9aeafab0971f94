"""Activation-memory schedules: the paper's Table 3 figure, and the layer-by-layer peak
against the tensors PyTorch actually keeps alive."""

from __future__ import annotations

import json
import weakref
from collections import Counter

import pytest
import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mobilenetv2 import MobileNetV2, ModelConfig
from mobilenetv2.memory import (
    blockwise_peak_bytes,
    blockwise_schedule,
    layerwise_peak_bytes,
    layerwise_schedule,
    microcontroller_ram_bytes,
    per_resolution,
)
from mobilenetv2.model.fuse import fuse
from mobilenetv2.model.layers import SamePad2d

WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
RES = (96, 128, 160, 192, 224)


def test_table3_max_memory_width_1_224() -> None:
    """Table 3 of arXiv 1801.04381: MobileNetV2's max memory "400K" with 16-bit floats, and
    "16/400" at 112x112, with the first-layer trick of section 5. The table writes
    kilobytes of 1000 bytes to about two significant digits."""
    sched = blockwise_schedule(ModelConfig())
    kb = sched.largest_tensor_elements * 2 / 1000
    assert round(kb, -1) == 400
    side, channels, elements = per_resolution(sched)[1]
    assert (side, channels, round(elements * 2 / 1000, -1)) == (112, 16, 400)
    # Without the first-layer trick the stem's 32 channels at 112x112 are whole (800K).
    no_trick = blockwise_schedule(ModelConfig(), fuse_stem=False)
    assert round(no_trick.largest_tensor_elements * 2 / 1000, -1) == 800


class LiveTensors(TorchDispatchMode):
    """Bytes of the activation storages alive after each aten op (parameters excluded)."""

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        self.exclude = exclude
        self.size: dict[int, int] = {}
        self.refs: Counter[int] = Counter()
        self.trace: list[tuple[str, int]] = []

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.exclude:
            return
        self.size[key] = storage.nbytes()
        self.refs[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.size[key], self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        self.trace.append((func.overloadpacket.__name__, sum(self.size.values())))
        return out


class FreeAfterLastUse(fx.Interpreter):
    """fx's interpreter drops each value after its last use; the image comes from a list
    that it empties, so nothing outside holds it either."""

    def __init__(self, module: fx.GraphModule, image: list[torch.Tensor]) -> None:
        super().__init__(module, garbage_collect_values=True)
        self.image = image

    def placeholder(self, target, args, kwargs):  # noqa: ANN001
        return self.image.pop()


class PadsAreLayers(fx.Tracer):
    """`SamePad2d` computes its amounts from the input's shape: one traced call, not code."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SamePad2d) or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("width, res, batch, padding", [
    (0.35, 64, 1, "symmetric"), (1.0, 96, 1, "symmetric"), (1.4, 65, 2, "symmetric"),
    (0.5, 67, 1, "tf_same"),
])
def test_layerwise_peak_matches_live_torch_tensors(width: float, res: int, batch: int,
                                                    padding: str) -> None:
    cfg = ModelConfig(width=width, resolution=res, num_classes=10, padding=padding)
    model = fuse(MobileNetV2(cfg), channels_last=False)
    net = nn.Sequential(model.stem, model.blocks, model.head, model.pool, nn.Flatten(1),
                        model.classifier)
    graph = fx.GraphModule(net, PadsAreLayers().trace(net))
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    tracker = LiveTensors(params)
    with torch.no_grad(), tracker:
        image = [torch.randn(batch, 3, res, res)]
        FreeAfterLastUse(graph, image).run(None)
    # The live bytes PyTorch holds at every conv, pad and add, in order.
    ops = ("convolution", "constant_pad_nd", "add")
    measured = [live for op, live in tracker.trace if op in ops]
    steps = [s for s in layerwise_schedule(cfg).steps if s.op not in ("pool", "classifier")]
    assert measured == [s.bytes(4, batch) for s in steps]
    assert max(live for _, live in tracker.trace) == layerwise_peak_bytes(cfg, batch=batch)


@pytest.mark.parametrize("width", WIDTHS)
def test_blockwise_is_far_below_layerwise_and_monotone(width: float) -> None:
    prev = 0
    for res in RES:
        cfg = ModelConfig(width=width, resolution=res)
        block, layer = blockwise_peak_bytes(cfg), layerwise_peak_bytes(cfg)
        assert 0 < block * 2 < layer
        assert block > prev  # more pixels, more memory
        prev = block
        # Bytes scale with the element size and the batch.
        assert blockwise_peak_bytes(cfg, bytes_per_element=1) * 4 == block
        assert layerwise_peak_bytes(cfg, bytes_per_element=2, batch=3) * 2 == 3 * layer
        # Coarser slices never need less; int8 with int32 accumulators needs more than int8.
        assert blockwise_peak_bytes(cfg, slices=4) >= blockwise_peak_bytes(cfg, slices=8)
        assert blockwise_peak_bytes(cfg, slices=8) >= block
        assert microcontroller_ram_bytes(cfg) > blockwise_peak_bytes(cfg, bytes_per_element=1)


def test_wider_networks_need_more() -> None:
    peaks = [blockwise_peak_bytes(ModelConfig(width=w)) for w in WIDTHS]
    assert peaks == sorted(peaks)
    layers = [layerwise_peak_bytes(ModelConfig(width=w)) for w in WIDTHS]
    assert layers == sorted(layers)


def test_tf_same_pads_are_live_copies() -> None:
    sym = layerwise_schedule(ModelConfig(resolution=96))
    same = layerwise_schedule(ModelConfig(resolution=96, padding="tf_same"))
    assert len(same.steps) == len(sym.steps) + 5  # the stem and four stride-2 depthwises
    assert same.peak_bytes(4) > sym.peak_bytes(4)


@pytest.mark.parametrize("bad, match", [({"slices": 0}, "slices"), ({"batch": 0}, "batch")])
def test_bad_arguments(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        blockwise_peak_bytes(ModelConfig(), **bad)


@pytest.mark.parametrize("output_stride, aspp", [(16, False), (8, True)])
def test_segmenter_layerwise_matches_live_torch_tensors(output_stride: int, aspp: bool) -> None:
    """Mobile DeepLabv3: the dilated backbone, the head's branches (live together until the
    concatenation) and the upsampling, against what PyTorch holds."""
    from mobilenetv2.model.build import build_model

    res = 97
    cfg = ModelConfig(task="segment", width=0.5, resolution=res, num_classes=5,
                      output_stride=output_stride, aspp=aspp)
    model = fuse(build_model(cfg), channels_last=False)
    net = nn.Sequential(model.backbone.stem, model.backbone.blocks, model.head,
                        nn.Upsample(size=(res, res), mode="bilinear", align_corners=True))
    graph = fx.GraphModule(net, PadsAreLayers().trace(net))
    tracker = LiveTensors({p.untyped_storage().data_ptr() for p in net.parameters()})
    with torch.no_grad(), tracker:
        FreeAfterLastUse(graph, [torch.randn(1, 3, res, res)]).run(None)
    ops = ("convolution", "add", "mean", "cat", "upsample_bilinear2d")
    measured = [live for op, live in tracker.trace if op in ops]
    sched = layerwise_schedule(cfg)
    assert measured == [s.bytes(4) for s in sched.steps]
    assert max(live for _, live in tracker.trace) == sched.peak_bytes(4)
    # Fusing the blocks never costs; at output stride 8 with ASPP the head's concatenated
    # branches are the peak of both schedules.
    assert blockwise_peak_bytes(cfg) <= sched.peak_bytes(4)


def test_detector_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="not modelled"):
        layerwise_schedule(ModelConfig(task="detect", num_classes=81, resolution=320))


def test_cli_memory_json_and_table(capsys: pytest.CaptureFixture) -> None:
    from mobilenetv2.cli import main

    assert main(["profile", "--memory", "--width", "0.5", "--resolution", "96", "--json",
                 "--batch", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    cfg = ModelConfig(width=0.5, resolution=96)
    assert report["blockwise"]["peak_bytes"]["int8"] == blockwise_peak_bytes(cfg, 96, 1, 2)
    assert report["layerwise"]["peak_bytes"]["fp16"] == layerwise_peak_bytes(cfg, 96, 2, 2)
    assert len(report["layerwise"]["steps"]) == len(layerwise_schedule(cfg).steps)

    assert main(["profile", "--memory", "--width", "0.5", "--resolution", "96", "--steps"]) == 0
    out = capsys.readouterr().out
    assert "Table 3" in out and "microcontroller" in out
    assert f"{layerwise_peak_bytes(cfg):,}" in out and "blocks.16.project" in out


def test_cli_memory_grid(capsys: pytest.CaptureFixture) -> None:
    from mobilenetv2.cli import main

    assert main(["profile", "--memory", "--all-sizes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["width"], r["resolution"]) for r in rows} == {(w, r) for w in WIDTHS for r in RES}
    row = next(r for r in rows if (r["width"], r["resolution"]) == (1.0, 224))
    assert round(row["largest_tensor_fp16_bytes"] / 1000, -1) == 400  # Table 3's 400K


def test_cli_memory_segmenter_and_detector(capsys: pytest.CaptureFixture) -> None:
    from mobilenetv2.cli import main

    assert main(["profile", "--memory", "--variant", "deeplabv3_mobilenetv2_050",
                 "--resolution", "129", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layerwise"]["steps"][-1]["op"] == "upsample"
    assert main(["profile", "--memory", "--task", "detect", "--num-classes", "81"]) == 2
    assert "not modelled" in capsys.readouterr().err
