"""evaluate: the top-k metric loop on logits whose ranks are known by construction, its
cross-process sum, and the `eval` verb's dataset handling (label order, mismatched folders,
report files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mobilenetv2 import create_model
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.evaluate import run_eval, topk_metrics
from mobilenetv2.weights import load_weights, save

# Six images, six classes. Row i is the logits of image i; the true class of each image sits
# at a chosen rank: 1st, 1st, 3rd, 6th (outside the top 5), 2nd, 1st.
LOGITS = torch.tensor([
    [9.0, 1, 2, 3, 4, 5],   # true 0: rank 1
    [1.0, 9, 2, 3, 4, 5],   # true 1: rank 1
    [7.0, 8, 6, 1, 2, 3],   # true 2: rank 3 (predicted 1)
    [5.0, 4, 3, 2, 1, 0],   # true 5: rank 6 (predicted 0)
    [8.0, 1, 2, 3, 9, 5],   # true 0: rank 2 (predicted 4)
    [1.0, 2, 3, 4, 5, 9],   # true 5: rank 1
])
TARGETS = torch.tensor([0, 1, 2, 5, 0, 5])


class Lookup(nn.Module):
    """Logits by image index: the input is the index itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LOGITS[x[:, 0].long()]


def batches() -> list:
    idx = torch.arange(6, dtype=torch.float32)[:, None]
    return [(idx[:4], TARGETS[:4], []), (idx[4:4], TARGETS[4:4], ["bad.jpg"]),
            (idx[4:], TARGETS[4:], [])]


def test_topk_metrics_on_known_ranks() -> None:
    r = topk_metrics(Lookup(), batches(), torch.device("cpu"), 6, progress=False)
    assert r.count == 6 and r.skipped == ["bad.jpg"]
    assert r.top1 == pytest.approx(3 / 6) and r.top5 == pytest.approx(5 / 6)
    assert r.loss == pytest.approx(F.cross_entropy(LOGITS, TARGETS).item())
    expected = np.zeros((6, 6), dtype=np.int64)
    for true, pred in [(0, 0), (1, 1), (2, 1), (5, 0), (0, 4), (5, 5)]:
        expected[true, pred] += 1
    np.testing.assert_array_equal(r.confusion.numpy(), expected)
    assert r.per_class == pytest.approx([0.5, 1.0, 0.0, 0.0, 0.0, 0.5])  # 3, 4: no images


def test_topk_metrics_sums_over_ranks() -> None:
    """Two ranks with identical shards: counts double, accuracies stay."""
    calls = []

    def twice(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.dtype)
        return t.mul_(2)

    r = topk_metrics(Lookup(), batches(), torch.device("cpu"), 6, sum_over_ranks=twice,
                     progress=False)
    assert len(calls) == 2 and r.count == 12 and int(r.confusion.sum()) == 12
    assert r.top1 == pytest.approx(3 / 6) and r.top5 == pytest.approx(5 / 6)


@pytest.fixture
def weights(tmp_path):
    """Labels in the order b, a: the folders sort the other way round. Class 0 ("b") wins
    on every image."""
    model = create_model("mobilenetv2_035", num_classes=2).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([50.0, 0.0]))
    return save(model, tmp_path / "w.safetensors", preprocessing=Preprocessing(36, 32),
                labels=["b", "a"])


def folder(root, counts: dict[str, int]):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    return root


def test_run_eval_follows_the_weights_label_order(weights, tmp_path) -> None:
    data = folder(tmp_path / "d", {"a": 2, "b": 3})
    report = run_eval(load_weights(str(weights)), str(data), tmp_path / "out", batch_size=2,
                      num_workers=0, progress=False)
    r = report.result
    assert report.labels == ["b", "a"] and r.count == 5
    assert r.top1 == pytest.approx(3 / 5)  # every image predicted "b"; folder order: 2 / 5
    assert r.confusion.tolist() == [[3, 0], [2, 0]]
    saved = json.loads(report.json_path.read_text())
    assert saved["per_class"] == {"b": 1.0, "a": 0.0} and saved["labels"] == ["b", "a"]
    assert report.png_path.is_file() and report.png_path.stat().st_size > 0


def test_run_eval_refuses_folders_that_are_not_the_labels(weights, tmp_path) -> None:
    data = folder(tmp_path / "d", {"a": 1, "c": 1})
    with pytest.raises(UserError, match=r"class folders \['a', 'c'\] do not match"):
        run_eval(load_weights(str(weights)), str(data), num_workers=0, progress=False)
    with pytest.raises(UserError, match="no metadata"):
        run_eval(create_model("mobilenetv2_035", num_classes=2), str(data), progress=False)
