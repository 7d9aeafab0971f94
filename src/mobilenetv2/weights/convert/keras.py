"""Keras Applications MobileNetV2 -> our model: `convert_keras(model_or_h5_path)`.

Sources (Keras Applications, `keras/src/applications/mobilenet_v2.py`):
- a live `keras.applications.MobileNetV2` (Keras 3, any backend; no TensorFlow needed), or
- the official legacy weight files `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_
  {rows}.h5` (and `..._no_top.h5`), read with h5py only. Their layout is Keras' legacy HDF5
  format (`keras/src/legacy/saving/legacy_h5_format.py`): the root attribute `layer_names`
  lists every layer in model order; each layer is a group whose `weight_names` attribute
  lists its weights, stored at `{layer}/{weight_name}` (e.g. `bn_Conv1/bn_Conv1/gamma:0`).

Weights are taken in layer order, the way Keras' own legacy loader matches them, so the
converter does not depend on layer names (they changed across Keras versions: `Logits` vs
`predictions`, `depthwise_kernel` vs `kernel`, `mobl0_conv_0_*` vs `block_0_*`). Every
tensor is then placed by its role (stem, expand, depthwise, project, head, classifier); the
inferred width reproduces every layer's channels, and the state dict is checked against the
model where it is loaded (`model_from_converted`, `load_state_dict_checked`).

Keras computes widths as `_make_divisible(int(filters * alpha), 8)` (note the truncation)
while `resolve()` (like TF-slim and torchvision) rounds `filters * alpha` directly. Both give
the same channels for all six official alphas (0.35, 0.5, 0.75, 1.0, 1.3, 1.4) and the same
stem (`_make_divisible(32 * alpha, 8)`) and last layer (1280, or `_make_divisible(1280 *
alpha, 8)` above 1). For some other alphas they differ (0.56: Keras stages 8/16/16/32/...,
ours 16/16/24/40/...); the converter then looks for a width whose rounding reproduces every
layer (`fit.fit_width`, the alpha in the file name first) and otherwise fails, naming the
layers that differ.

The result uses TF's conventions: `padding="tf_same"` (Keras pads stride-2 depthwise convs
with `correct_pad`, (0, 1) on even inputs and (1, 1) on odd, exactly TF's SAME; the stem uses
`padding="same"`), BN eps 1e-3 and momentum 0.001 (Keras' 0.999 decay), 1000 classes, and
[-1, 1] input scaling (`mobilenet_v2.preprocess_input`, mode "tf": x / 127.5 - 1).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenetv2.config import ModelConfig
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.model.arch import ArchSpec, resolve
from mobilenetv2.weights.convert.fit import fit_width, nearest_width
from mobilenetv2.weights.format import Converted, WeightsMeta, source_provenance
from mobilenetv2.weights.imagenet import imagenet_labels

__all__ = ["convert_keras"]

log = logging.getLogger(__name__)

BN_EPS = 1e-3  # Keras BatchNormalization(epsilon=1e-3) in mobilenet_v2.py
BN_MOMENTUM = 1e-3  # Keras momentum=0.999 is a decay; PyTorch's momentum is 1 - decay
_FILE_RE = re.compile(r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_([0-9.]+)_(\d+)")
# Keras BatchNormalization weight order; the file's names say which is which.
_BN_PARTS = ("gamma", "beta", "moving_mean", "moving_variance")
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


@dataclass
class _Layer:
    """One Keras layer that holds weights: its name and weights by short name."""

    name: str
    weights: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        if set(self.weights) == set(_BN_PARTS):
            return "bn"
        kernel = self.weights.get("kernel")
        if kernel is not None and kernel.ndim == 4 and set(self.weights) == {"kernel"}:
            # Keras DepthwiseConv2D kernels are (kh, kw, channels, depth_multiplier=1).
            return "depthwise" if kernel.shape[:2] != (1, 1) and kernel.shape[3] == 1 else "conv"
        if kernel is not None and kernel.ndim == 2 and set(self.weights) == {"kernel", "bias"}:
            return "dense"
        return "other"


def _short(weight_name: str) -> str:
    """`bn_Conv1/gamma:0` -> `gamma`; `depthwise_kernel` (tf.keras) -> `kernel`."""
    base = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
    return "kernel" if base == "depthwise_kernel" else base


def _layers_from_model(model: Any) -> tuple[list[_Layer], dict[str, Any]]:
    from keras import ops

    layers = []
    for layer in model.layers:
        if layer.weights:
            weights = {}
            for w in layer.weights:
                weights[_short(w.path if hasattr(w, "path") else w.name)] = np.asarray(
                    ops.convert_to_numpy(w), dtype=np.float32
                )
            layers.append(_Layer(layer.name, weights))
    shape = model.input_shape
    rows = None
    if isinstance(shape, tuple) and len(shape) == 4:
        rows = shape[1] if shape[-1] == 3 else shape[2]  # channels_last or channels_first
    info: dict[str, Any] = {"rows": rows, "name": model.name, "alpha": None}
    # keras.applications names the model f"mobilenetv2_{alpha:0.2f}_{rows}".
    m = re.fullmatch(r"mobilenetv2_([0-9.]+)_\w+", model.name or "")
    if m:
        info["alpha"] = float(m.group(1))
    return layers, info


def _layers_from_h5(path: Path) -> tuple[list[_Layer], dict[str, Any]]:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UserError("reading Keras .h5 files needs h5py: pip install h5py") from e
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f  # full-model saves
            if "layer_names" not in root.attrs:
                raise UserError(
                    f"{path}: not a Keras legacy HDF5 weights file (no 'layer_names' "
                    "attribute); Keras 3 '.weights.h5' files: load them into "
                    "keras.applications.MobileNetV2 and pass the model instead"
                )
            layers = []
            for raw in root.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[name]
                weights = {}
                for wraw in group.attrs.get("weight_names", []):
                    wname = wraw.decode() if isinstance(wraw, bytes) else str(wraw)
                    weights[_short(wname)] = np.asarray(group[wname], dtype=np.float32)
                if weights:
                    layers.append(_Layer(name, weights))
    except UserError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise UserError(
            f"{path}: unreadable or corrupt HDF5 file ({e}); a '.keras' archive: load it with "
            "keras.saving.load_model() and pass the model"
        ) from e
    info: dict[str, Any] = {"rows": None, "alpha": None}
    m = _FILE_RE.search(path.name)
    if m:
        info["alpha"], info["rows"] = float(m.group(1)), int(m.group(2))
    return layers, info


@dataclass
class _Found:
    stem: tuple[_Layer, _Layer]
    blocks: list[dict[str, tuple[_Layer, _Layer]]]
    head: tuple[_Layer, _Layer]
    dense: _Layer | None


def _parse(layers: list[_Layer], source: str) -> _Found:
    """Group layers into conv+BN pairs and those into stem, blocks, head, classifier."""
    kinds = [layer.kind for layer in layers]
    odd = [f"{layer.name} ({', '.join(layer.weights)})" for layer in layers
           if layer.kind == "other"]
    if odd:
        raise UserError(f"{source}: layers a Keras MobileNetV2 does not have: {', '.join(odd)}")
    dense = None
    if kinds and kinds[-1] == "dense":
        dense = layers.pop()
        kinds.pop()
    pairs: list[tuple[str, _Layer, _Layer]] = []
    for i in range(0, len(layers), 2):
        conv, bn = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if conv.kind not in ("conv", "depthwise") or bn is None or bn.kind != "bn":
            raise UserError(
                f"{source}: expected a convolution followed by its BatchNormalization at "
                f"layer {conv.name!r}; the file's layers are not Keras' MobileNetV2"
            )
        pairs.append((conv.kind, conv, bn))
    if len(pairs) < 3:
        raise UserError(f"{source}: only {len(pairs)} conv layers; not a Keras MobileNetV2")
    stem, head = pairs[0], pairs[-1]
    blocks: list[dict[str, tuple[_Layer, _Layer]]] = []
    body, j = pairs[1:-1], 0
    while j < len(body):
        block: dict[str, tuple[_Layer, _Layer]] = {}
        if body[j][0] == "conv":
            block["expand"] = body[j][1:]
            j += 1
        if j + 1 >= len(body) or body[j][0] != "depthwise" or body[j + 1][0] != "conv":
            name = body[j][1].name if j < len(body) else head[1].name
            raise UserError(f"{source}: block {len(blocks)} does not have the expand / "
                            f"depthwise / project structure at layer {name!r}")
        block["depthwise"], block["project"] = body[j][1:], body[j + 1][1:]
        j += 2
        blocks.append(block)
    if stem[0] != "conv" or head[0] != "conv":
        raise UserError(f"{source}: the first and last convolutions must be regular convs")
    return _Found(stem[1:], blocks, head[1:], dense)


def _facts(found: _Found) -> dict[str, Any]:
    return {
        "stem": found.stem[0].weights["kernel"].shape[3],
        "blocks": [
            (
                "expand" in b,
                b["depthwise"][0].weights["kernel"].shape[2],
                b["project"][0].weights["kernel"].shape[3],
            )
            for b in found.blocks
        ],
        "head": found.head[0].weights["kernel"].shape[3],
    }


def _arch_facts(arch: ArchSpec) -> dict[str, Any]:
    return {
        "stem": arch.stem_channels,
        "blocks": [(b.has_expand, b.hidden_channels, b.out_channels) for b in arch.blocks],
        "head": arch.head_channels,
    }


def _infer_config(found: _Found, base: ModelConfig, alpha: float | None, source: str
                  ) -> ModelConfig:
    facts = _facts(found)
    last = facts["blocks"][-1][2] if facts["blocks"] else None
    cfg = fit_width(base, lambda arch: _arch_facts(arch) == facts, last,
                    prefer=(alpha,) if alpha else ())
    if cfg is not None:
        return cfg
    want = base.replace(width=alpha or nearest_width(last))
    exp = _arch_facts(resolve(want))
    diffs = []
    if exp["stem"] != facts["stem"]:
        diffs.append(f"stem {facts['stem']} (ours {exp['stem']})")
    for i, (a, b) in enumerate(zip(facts["blocks"], exp["blocks"])):
        if a != b:
            diffs.append(f"block {i} hidden/out {a[1]}/{a[2]} (ours {b[1]}/{b[2]})")
    if len(facts["blocks"]) != len(exp["blocks"]):
        diffs.append(f"{len(facts['blocks'])} blocks (ours {len(exp['blocks'])})")
    if exp["head"] != facts["head"]:
        diffs.append(f"head {facts['head']} (ours {exp['head']})")
    raise UserError(
        f"{source}: no width of our MobileNetV2 reproduces this model's channels exactly "
        f"(Keras rounds int(filters * alpha); closest width {want.width}: "
        f"{'; '.join(diffs[:6])}{' ...' if len(diffs) > 6 else ''})"
    )


def _conv_bn(prefix: str, pair: tuple[_Layer, _Layer], depthwise: bool) -> dict[str, Any]:
    conv, bn = pair
    k = conv.weights["kernel"]
    # HWIO -> OIHW; depthwise (H, W, C, 1) -> (C, 1, H, W)
    w = k.transpose(2, 3, 0, 1) if depthwise else k.transpose(3, 2, 0, 1)
    out = {f"{prefix}.conv.weight": torch.from_numpy(np.ascontiguousarray(w))}
    for part, key in zip(_BN_PARTS, _BN_KEYS):
        out[f"{prefix}.bn.{key}"] = torch.from_numpy(np.ascontiguousarray(bn.weights[part]))
    out[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def _state_dict(found: _Found) -> dict[str, torch.Tensor]:
    sd = _conv_bn("stem", found.stem, False)
    for i, b in enumerate(found.blocks):
        if "expand" in b:
            sd |= _conv_bn(f"blocks.{i}.expand", b["expand"], False)
        sd |= _conv_bn(f"blocks.{i}.depthwise", b["depthwise"], True)
        sd |= _conv_bn(f"blocks.{i}.project", b["project"], False)
    sd |= _conv_bn("head", found.head, False)
    if found.dense is not None:
        sd["classifier.weight"] = torch.from_numpy(
            np.ascontiguousarray(found.dense.weights["kernel"].T)
        )
        sd["classifier.bias"] = torch.from_numpy(np.ascontiguousarray(found.dense.weights["bias"]))
    return sd


def _is_keras_model(source: Any) -> bool:
    return hasattr(source, "layers") and hasattr(source, "weights") and hasattr(
        source, "input_shape"
    )


def convert_keras(source: Any, *, backbone_only: bool = False) -> Converted:
    """Convert a Keras MobileNetV2 (live model or legacy `.h5` weights file).

    Args:
        source: A `keras.applications.MobileNetV2` model, or the path of an official
            `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}.h5` file (or any
            legacy-HDF5 weights file of that model).
        backbone_only: Accept models without the classifier (`include_top=False`,
            `..._no_top.h5`). The state dict then holds only backbone keys (stem, blocks,
            head), for `MobileNetV2Backbone(meta.config)` or a fine-tuning model
            (`load_state_dict(..., strict=False)`); it cannot be saved as a classifier.

    Returns:
        Config (width and classes inferred, `padding="tf_same"`, BN eps 1e-3), state dict,
        metadata ([-1, 1] preprocessing at the model's resolution, ImageNet labels).

    Raises:
        UserError: unreadable file, not a MobileNetV2, a width our rounding cannot express,
            or no classifier without `backbone_only=True`.
    """
    if _is_keras_model(source):
        src = f"Keras model {getattr(source, 'name', '')!r}"
        layers, info = _layers_from_model(source)
        provenance: dict[str, Any] = {"format": "keras", "source": src, "model": info["name"]}
    else:
        path = Path(os.fspath(source))
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        src = str(path)
        layers, info = _layers_from_h5(path)
        provenance = {**source_provenance(path, "keras"), "file": path.name}
    found = _parse(layers, src)
    if found.dense is None and not backbone_only:
        raise UserError(
            f"{src} has no classifier (include_top=False / _no_top.h5); convert the model "
            "with its top, or pass backbone_only=True to get the backbone weights alone"
        )
    num_classes = int(found.dense.weights["bias"].shape[0]) if found.dense else 1000
    rows = info.get("rows") or 224
    base = ModelConfig(
        resolution=max(int(rows), 32),
        num_classes=num_classes,
        bn_eps=BN_EPS,
        bn_momentum=BN_MOMENTUM,
        padding="tf_same",
    )
    cfg = _infer_config(found, base, info.get("alpha"), src)
    if info.get("alpha") and cfg.width != info["alpha"]:
        log.warning("%s: file name says alpha %s; its channels give width %s",
                    src, info["alpha"], cfg.width)
    state = _state_dict(found)
    meta = WeightsMeta(
        config=cfg,
        preprocessing=Preprocessing.tf_inception(cfg.resolution),
        labels=imagenet_labels(num_classes),
        provenance=provenance,
        extra={"keras": {"alpha": cfg.width, "rows": rows, "include_top": found.dense is not
                         None}},
    )
    return Converted(state_dict=state, meta=meta)

