"""Keras converter: logits parity against keras.applications.MobileNetV2 (Keras 3 on the
torch backend, no TensorFlow) for every official alpha, from the live model and from the
official legacy `.h5` weight-file layout. Run with `-s` to see the measured differences."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

import numpy as np
import pytest
import torch

from mobilenetv2.errors import UserError
from mobilenetv2.model import MobileNetV2, MobileNetV2Backbone
from mobilenetv2.model.arch import make_divisible, resolve
from mobilenetv2.weights.keras import KERAS_ALPHAS, convert_keras

keras = pytest.importorskip("keras", reason="Keras parity tests need keras (peers extra)")
if keras.backend.backend() != "torch":  # pragma: no cover - set before this module ran
    pytest.skip("Keras was imported with another backend; run with KERAS_BACKEND=torch",
                allow_module_level=True)

# Keras' torch backend converts tensors with np.array(x) and numpy 2 warns about it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
ROWS = 96
TOL = 1e-4


def _keras_model(alpha: float, include_top: bool = True, seed: int = 0, rows: int = ROWS):
    """A Keras MobileNetV2 with random weights and random BN statistics, logits output."""
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(
        input_shape=(rows, rows, 3),
        alpha=alpha,
        weights=None,
        include_top=include_top,
        classifier_activation=None,
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.weights[0].shape[0]
            # Non-trivial statistics, so a wrong eps/mean/var mapping changes the output.
            layer.set_weights([
                rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                rng.normal(0, 0.2, c), rng.uniform(0.3, 2.0, c),
            ])
        elif isinstance(layer, keras.layers.Dense):
            k, b = layer.get_weights()
            layer.set_weights([rng.normal(0, 0.2, k.shape), rng.normal(0, 1.0, b.shape)])
    return model


def _inputs(seed: int = 1, rows: int = ROWS) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, rows, rows, 3)).astype(np.float32)


def _keras_out(model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def _ours(converted, backbone: bool = False) -> torch.nn.Module:
    cls = MobileNetV2Backbone if backbone else MobileNetV2
    model = cls(converted.meta.config)
    model.load_state_dict(converted.state_dict)
    return model.eval()


def _our_out(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).numpy() if y.dim() == 4 else y.numpy()


def write_legacy_h5(model, path: Path) -> None:
    """The official files' layout (Keras 2 `save_weights` to .h5, keras-applications era):
    root attributes `layer_names` (every layer), `backend`, `keras_version`; one group per
    layer with attribute `weight_names` (`Conv1/kernel:0` ...) and the datasets at
    `{layer}/{layer}/{weight}:0`. tf.keras named depthwise kernels `depthwise_kernel` and
    keras-applications named the classifier `Logits`; both are reproduced here."""
    import h5py

    def legacy_name(layer) -> str:
        return "Logits" if isinstance(layer, keras.layers.Dense) else layer.name

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [legacy_name(layer).encode() for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            name = legacy_name(layer)
            g = f.create_group(name)
            names = []
            for w in layer.weights:
                short = w.path.rsplit("/", 1)[-1]
                if isinstance(layer, keras.layers.DepthwiseConv2D) and short == "kernel":
                    short = "depthwise_kernel"
                wname = f"{name}/{short}:0"
                g.create_dataset(wname, data=keras.ops.convert_to_numpy(w))
                names.append(wname.encode())
            g.attrs["weight_names"] = names


def _report(what: str, ref: np.ndarray, ours: np.ndarray) -> float:
    diff = float(np.abs(ref - ours).max())
    print(f"\n{what}: max |logit diff| = {diff:.2e} (logits up to {np.abs(ref).max():.1f})")
    return diff


@pytest.mark.parametrize("alpha", KERAS_ALPHAS)
def test_live_model_parity(alpha: float) -> None:
    model = _keras_model(alpha)
    converted = convert_keras(model)
    cfg = converted.meta.config
    assert cfg.width == alpha and cfg.resolution == ROWS and cfg.num_classes == 1000
    assert (cfg.padding, cfg.bn_eps, cfg.bn_momentum) == ("tf_same", 1e-3, 1e-3)
    x = _inputs()
    ref, ours = _keras_out(model, x), _our_out(_ours(converted), x)
    assert _report(f"keras live alpha={alpha}", ref, ours) <= TOL
    assert len(converted.meta.labels) == 1000 and converted.meta.labels[0] == "tench"
    pre = converted.meta.preprocessing
    assert pre.mean == (0.5,) * 3 and pre.std == (0.5,) * 3 and pre.crop == ROWS


def test_odd_resolution_parity() -> None:
    """99 px: feature maps 50, 25, 13, 7 are odd at some stride-2 layers, where TF SAME pads
    (1, 1) instead of (0, 1); Keras' correct_pad and our tf_same agree there too."""
    model = _keras_model(0.35, seed=4, rows=99)
    converted = convert_keras(model)
    assert converted.meta.config.resolution == 99
    x = _inputs(rows=99)
    ref, ours = _keras_out(model, x), _our_out(_ours(converted), x)
    assert _report("keras live alpha=0.35 at 99x99", ref, ours) <= TOL


@pytest.mark.parametrize("alpha", (0.35, 1.0, 1.4))
def test_legacy_h5_parity(alpha: float, tmp_path: Path) -> None:
    model = _keras_model(alpha, seed=2)
    path = tmp_path / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{ROWS}.h5"
    write_legacy_h5(model, path)
    # Keras itself reads the file we wrote (its legacy HDF5 loader): the layout is real.
    fresh = keras.applications.MobileNetV2(
        input_shape=(ROWS, ROWS, 3), alpha=alpha, weights=None, classifier_activation=None
    )
    fresh.load_weights(str(path))
    x = _inputs()
    ref = _keras_out(model, x)
    np.testing.assert_array_equal(_keras_out(fresh, x), ref)
    converted = convert_keras(path)
    assert converted.meta.config.width == alpha and converted.meta.config.resolution == ROWS
    assert converted.meta.provenance["file"] == path.name
    assert len(converted.meta.provenance["sha256"]) == 64
    assert _report(f"keras legacy .h5 alpha={alpha}", ref, _our_out(_ours(converted), x)) <= TOL


@pytest.mark.parametrize("alpha", KERAS_ALPHAS)
def test_keras_channel_rounding_matches_resolve(alpha: float) -> None:
    """Keras: stem `_make_divisible(32 * alpha)`, stages `_make_divisible(int(c * alpha))`,
    last conv 1280 unless alpha > 1. Same channels as our resolve() for every official alpha."""
    from mobilenetv2.config import ModelConfig
    from mobilenetv2.model.arch import HEAD_CHANNELS, STAGES, STEM_CHANNELS

    arch = resolve(ModelConfig(width=alpha))
    assert arch.stem_channels == make_divisible(STEM_CHANNELS * alpha, 8)
    outs = [b.out_channels for b in arch.blocks]
    keras_outs = [make_divisible(int(st.c * alpha), 8) for st in STAGES for _ in range(st.n)]
    assert outs == keras_outs
    head = make_divisible(HEAD_CHANNELS * alpha, 8) if alpha > 1.0 else HEAD_CHANNELS
    assert arch.head_channels == head


def test_keras_only_width_is_refused_loudly() -> None:
    """alpha 0.56: Keras' int() truncation gives different channels than TF-slim rounding
    and no width of ours reproduces them: a clear error, never a silent mismatch."""
    model = keras.applications.MobileNetV2(
        input_shape=(ROWS, ROWS, 3), alpha=0.56, weights=None, classifier_activation=None
    )
    with pytest.raises(UserError, match="no width of our MobileNetV2 reproduces"):
        convert_keras(model)


def test_include_top_false(tmp_path: Path) -> None:
    model = _keras_model(0.5, include_top=False, seed=3)
    with pytest.raises(UserError, match="no classifier .* backbone_only=True"):
        convert_keras(model)
    converted = convert_keras(model, backbone_only=True)
    assert not any(k.startswith("classifier") for k in converted.state_dict)
    x = _inputs()
    ref, ours = _keras_out(model, x), _our_out(_ours(converted, backbone=True), x)
    assert ref.shape == ours.shape
    assert _report("keras include_top=False features", ref, ours) <= TOL
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
    model = _keras_model(0.35)
    new = tmp_path / "model.weights.h5"
    model.save_weights(str(new))
    with pytest.raises(UserError, match="layer_names"):
        convert_keras(new)
