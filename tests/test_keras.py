"""Keras converter: logits parity against keras.applications.MobileNetV2 (Keras 3 on the
torch backend, no TensorFlow) for every official alpha, from the live model and from the
official legacy `.h5` weight-file layout. Run with `-s` to see the measured differences."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenetv2.config import ModelConfig
from mobilenetv2.errors import UserError
from mobilenetv2.model.arch import resolve
from mobilenetv2.weights.convert.keras import convert_keras
from support.keras_models import (
    ROWS,
    inputs,
    keras,
    keras_model,
    keras_out,
    our_model,
    our_out,
    write_legacy_h5,
)

# Keras' torch backend converts tensors with np.array(x) and numpy 2 warns about it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
TOL = 1e-4
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # every alpha Keras Applications publishes weights for


def _report(what: str, ref: np.ndarray, ours: np.ndarray, noun: str = "logit") -> float:
    diff = float(np.abs(ref - ours).max())
    print(f"\n{what}: max |{noun} diff| = {diff:.2e} ({noun}s up to {np.abs(ref).max():.1f})")
    return diff


@pytest.mark.parametrize("alpha", ALPHAS)
def test_live_model_parity(alpha: float) -> None:
    model = keras_model(alpha)
    converted = convert_keras(model)
    cfg = converted.meta.config
    assert cfg.width == alpha and cfg.resolution == ROWS and cfg.num_classes == 1000
    assert (cfg.padding, cfg.bn_eps, cfg.bn_momentum) == ("tf_same", 1e-3, 1e-3)
    x = inputs()
    ref, ours = keras_out(model, x), our_out(our_model(converted), x)
    assert _report(f"keras live alpha={alpha}", ref, ours) <= TOL
    assert len(converted.meta.labels) == 1000 and converted.meta.labels[0] == "tench"
    pre = converted.meta.preprocessing
    assert pre.mean == (0.5,) * 3 and pre.std == (0.5,) * 3 and pre.crop == ROWS


def test_odd_resolution_parity() -> None:
    """99 px: feature maps 50, 25, 13, 7 are odd at some stride-2 layers, where TF SAME pads
    (1, 1) instead of (0, 1); Keras' correct_pad and our tf_same agree there too."""
    model = keras_model(0.35, seed=4, rows=99)
    converted = convert_keras(model)
    assert converted.meta.config.resolution == 99
    x = inputs(rows=99)
    ref, ours = keras_out(model, x), our_out(our_model(converted), x)
    assert _report("keras live alpha=0.35 at 99x99", ref, ours) <= TOL


@pytest.mark.parametrize("alpha", (0.35, 1.0, 1.4))
def test_legacy_h5_parity(alpha: float, tmp_path: Path) -> None:
    model = keras_model(alpha, seed=2)
    path = tmp_path / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{ROWS}.h5"
    write_legacy_h5(model, path)
    # Keras itself reads the file we wrote (its legacy HDF5 loader): the layout is real.
    fresh = keras.applications.MobileNetV2(
        input_shape=(ROWS, ROWS, 3), alpha=alpha, weights=None, classifier_activation=None
    )
    fresh.load_weights(str(path))
    x = inputs()
    ref = keras_out(model, x)
    np.testing.assert_array_equal(keras_out(fresh, x), ref)
    converted = convert_keras(path)
    assert converted.meta.config.width == alpha and converted.meta.config.resolution == ROWS
    provenance = converted.meta.provenance
    assert provenance["file"] == path.name and provenance["format"] == "keras"
    assert provenance["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _report(f"keras legacy .h5 alpha={alpha}", ref, our_out(our_model(converted), x)) <= TOL


# Keras Applications' MobileNetV2 channels per alpha (`mobilenet_v2.py`: stem
# `_make_divisible(32 * alpha)`, block outputs `_make_divisible(int(c * alpha))`, last conv 1280
# unless alpha > 1), as published with its weight files: stem, the output channels of the
# seven stages (paper Table 2), last conv.
KERAS_CHANNELS = {
    0.35: (16, (8, 8, 16, 24, 32, 56, 112), 1280),
    0.5: (16, (8, 16, 16, 32, 48, 80, 160), 1280),
    0.75: (24, (16, 24, 24, 48, 72, 120, 240), 1280),
    1.0: (32, (16, 24, 32, 64, 96, 160, 320), 1280),
    1.3: (40, (24, 32, 40, 80, 128, 208, 416), 1664),
    1.4: (48, (24, 32, 48, 88, 136, 224, 448), 1792),
}


REPEATS = (1, 2, 3, 4, 3, 3, 1)  # blocks per stage, paper Table 2


def _per_block(stages: tuple[int, ...]) -> list[int]:
    return [c for c, n in zip(stages, REPEATS) for _ in range(n)]


@pytest.mark.parametrize("alpha", ALPHAS)
def test_keras_channels_match_resolve(alpha: float) -> None:
    """Keras rounds int(filters * alpha), we round filters * alpha: for every published alpha
    both give the published channels (read off the real Keras model, and our resolve())."""
    stem, stages, head = KERAS_CHANNELS[alpha]
    arch = resolve(ModelConfig(width=alpha))
    assert (arch.stem_channels, arch.head_channels) == (stem, head)
    assert [b.out_channels for b in arch.blocks] == _per_block(stages)
    model = keras.applications.MobileNetV2(input_shape=(ROWS, ROWS, 3), alpha=alpha,
                                           weights=None)
    convs = [layer for layer in model.layers if type(layer) is keras.layers.Conv2D]
    assert (convs[0].filters, convs[-1].filters) == (stem, head)
    assert [c.filters for c in convs if c.name.endswith("project")] == _per_block(stages)


def test_keras_only_width_is_refused_loudly() -> None:
    """alpha 0.56: Keras' int() truncation gives different channels than TF-slim rounding
    and no width of ours reproduces them: a clear error, never a silent mismatch."""
    model = keras.applications.MobileNetV2(
        input_shape=(ROWS, ROWS, 3), alpha=0.56, weights=None, classifier_activation=None
    )
    with pytest.raises(UserError, match="no width of our MobileNetV2 reproduces"):
        convert_keras(model)


def test_include_top_false(tmp_path: Path) -> None:
    model = keras_model(0.5, include_top=False, seed=3)
    with pytest.raises(UserError, match="no classifier .* backbone_only=True"):
        convert_keras(model)
    converted = convert_keras(model, backbone_only=True)
    assert not any(k.startswith("classifier") for k in converted.state_dict)
    x = inputs()
    ref, ours = keras_out(model, x), our_out(our_model(converted, backbone=True), x)
    assert ref.shape == ours.shape
    assert _report("keras include_top=False", ref, ours, "feature") <= TOL
    # The same from the _no_top.h5 layout.
    path = tmp_path / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_{ROWS}_no_top.h5"
    write_legacy_h5(model, path)
    from_file = convert_keras(path, backbone_only=True)
    assert from_file.state_dict.keys() == converted.state_dict.keys()
    for k, v in converted.state_dict.items():
        torch.testing.assert_close(from_file.state_dict[k], v, rtol=0, atol=0)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        convert_keras(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(UserError, match="corrupt"):
        convert_keras(junk)
    # Keras 3's own format is not the legacy layout: say what to do instead.
    model = keras_model(0.35)
    new = tmp_path / "model.weights.h5"
    model.save_weights(str(new))
    with pytest.raises(UserError, match="layer_names"):
        convert_keras(new)
