"""Keras MobileNetV2 models for the converter tests: random weights with non-trivial BN
statistics, the official legacy `.h5` layout written from them, and both models run on the
same inputs. Importing this module skips the importing test module when Keras (peers extra)
is missing or runs on a backend other than torch."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

import numpy as np
import pytest
import torch

from mobilenetv2.model import MobileNetV2, MobileNetV2Backbone

keras = pytest.importorskip("keras", reason="Keras parity tests need keras (peers extra)")
if keras.backend.backend() != "torch":  # pragma: no cover - set before this module ran
    pytest.skip("Keras was imported with another backend; run with KERAS_BACKEND=torch",
                allow_module_level=True)

__all__ = ["ROWS", "inputs", "keras", "keras_model", "keras_out", "our_model", "our_out",
           "write_legacy_h5"]

ROWS = 96


def keras_model(alpha: float, include_top: bool = True, seed: int = 0, rows: int = ROWS):
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


def inputs(seed: int = 1, rows: int = ROWS) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, rows, rows, 3)).astype(np.float32)


def keras_out(model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def our_model(converted, backbone: bool = False) -> torch.nn.Module:
    cls = MobileNetV2Backbone if backbone else MobileNetV2
    model = cls(converted.meta.config)
    model.load_state_dict(converted.state_dict)
    return model.eval()


def our_out(model, x: np.ndarray) -> np.ndarray:
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
