"""SSD post-processing shared by PyTorch, ONNX Runtime and int8 (paper section 6.2).

Decode the box codes against the anchors, softmax the class logits, drop scores under a
per-class threshold, run per-class NMS with `torchvision.ops.batched_nms` and keep the best
`max_detections`, as TF's `batch_non_max_suppression` (iou 0.6, 100 per class and in total).
Works on tensors from any runtime, so an exported network's outputs go through exactly the
code the PyTorch model uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from mobilenetv2.model.heads.anchors import decode

__all__ = ["postprocess"]


def postprocess(codes: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor,
                image_size: tuple[int, int], score_threshold: float = 0.01,
                iou_threshold: float = 0.6, max_detections: int = 100,
                per_class_candidates: int = 100) -> list[dict[str, torch.Tensor]]:
    """Per image: {"boxes": (K, 4) x1 y1 x2 y2 in input pixels, "labels", "scores"}."""
    codes, logits = torch.as_tensor(codes).float(), torch.as_tensor(logits).float()
    anchors = torch.as_tensor(anchors).float().to(codes.device)
    h, w = image_size
    scale = torch.tensor([h, w, h, w], dtype=torch.float32, device=codes.device)
    out = []
    for code, logit in zip(codes, logits):
        yxyx = (decode(code, anchors) * scale)
        boxes = yxyx[:, [1, 0, 3, 2]]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        scores = F.softmax(logit, -1)[:, 1:]  # column 0 is the background
        keep_boxes, keep_scores, keep_labels = [], [], []
        for c in range(scores.shape[1]):
            s = scores[:, c]
            idx = torch.nonzero(s > score_threshold).flatten()
            if idx.numel() > per_class_candidates:
                idx = idx[s[idx].topk(per_class_candidates).indices]
            keep_boxes.append(boxes[idx])
            keep_scores.append(s[idx])
            keep_labels.append(torch.full_like(idx, c + 1))
        b, s, lab = torch.cat(keep_boxes), torch.cat(keep_scores), torch.cat(keep_labels)
        keep = batched_nms(b, s, lab, iou_threshold)[:max_detections]
        out.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return out
