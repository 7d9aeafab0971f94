"""One golden-output test: the logits of fixed networks on a fixed input, stored in
tests/golden/outputs.json. It guards everything a refactor can silently change (the
initialisation order, block wiring, padding, dilation, the head) with numbers produced by an
earlier commit, not by the code under test.

Regenerate only on purpose (a deliberate change of the architecture or the initialisation),
and say why in the commit: `MOBILENETV2_REGENERATE_GOLDEN=1 pytest tests/test_golden.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mobilenetv2 import create_model

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
CASES = {
    "mobilenetv2_050": {},
    "mobilenetv2_035_tf_same_os8": {"padding": "tf_same", "output_stride": 8},
    "mobilenetv2_100_small_input": {"small_input": True},
}


def _outputs(name: str, overrides: dict) -> list[float]:
    torch.manual_seed(0)
    variant = name.split("_tf_same")[0].split("_small")[0]
    model = create_model(variant, num_classes=10, **overrides).eval()
    # A fresh network's BN is the identity and its classifier nearly zero; random BN
    # statistics and affine terms make every layer move the output.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.classifier.weight.normal_(0, 0.1)
    # A smooth, fully deterministic input (no RNG): a plane wave per channel at 67x75, odd
    # sizes so that SAME padding differs from symmetric padding.
    h, w = 67, 75
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x = torch.stack([torch.sin((xx * (c + 1) + yy * (3 - c)) / 7.0) for c in range(3)])[None]
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.forward_head(model.forward_features(x))
    return [*feats[0, :8].tolist(), *logits[0].tolist()]


def test_golden_outputs() -> None:
    got = {name: _outputs(name, o) for name, o in CASES.items()}
    if os.environ.get("MOBILENETV2_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"regenerated {GOLDEN}")
    want = json.loads(GOLDEN.read_text())
    assert set(want) == set(got)
    for name in CASES:
        assert torch.allclose(torch.tensor(got[name]), torch.tensor(want[name]),
                              rtol=1e-4, atol=1e-5), name
