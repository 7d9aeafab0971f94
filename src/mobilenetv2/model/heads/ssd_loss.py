"""SSD training targets and loss (paper section 6.2 trains SSDLite as TF's SSD config does).

Matching is TF's `argmax_matcher` of `ssdlite_mobilenet_v2_coco.config`: an anchor takes the
ground-truth box it overlaps most if that IoU is at least 0.5, else it is background; then
every ground-truth box is forced onto its best anchor (`force_match_for_each_row: true`), so
no object goes unlearned. The loss is smooth L1 (Huber, delta 1) on the encoded offsets of
matched anchors plus classification with hard negative mining: all positives and the
`neg_ratio` x as many highest-loss negatives (3:1, at least 3 per image as TF's
`max_negatives_per_positive: 3`, `min_negatives_per_image: 3`), normalised by the number
of matched anchors. `focal` replaces mining by a softmax focal loss over all anchors
(Lin et al. 2017, gamma 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from mobilenetv2.model.heads.anchors import encode

__all__ = ["MATCH_IOU", "match", "ssd_loss", "to_normalized_yxyx"]

MATCH_IOU = 0.5


def match(gt: torch.Tensor, anchors: torch.Tensor, threshold: float = MATCH_IOU
          ) -> torch.Tensor:
    """Index of the ground-truth box of each anchor, -1 for background.

    Args:
        gt: (G, 4) boxes, anchors (A, 4), both in the same corner order.
    """
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    if gt.numel() == 0:
        return matched
    iou = box_iou(gt, anchors)                              # (G, A)
    best_iou, best_gt = iou.max(0)
    matched = torch.where(best_iou >= threshold, best_gt, matched)
    # force_match_for_each_row: each box claims its best anchor (later boxes win ties,
    # as TF's scatter does).
    matched[iou.argmax(1)] = torch.arange(gt.shape[0], device=gt.device)
    return matched


def to_normalized_yxyx(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(x1, y1, x2, y2) in pixels -> TF's normalised (ymin, xmin, ymax, xmax)."""
    h, w = image_size
    x1, y1, x2, y2 = boxes.float().unbind(-1)
    return torch.stack([y1 / h, x1 / w, y2 / h, x2 / w], -1)


def ssd_loss(codes: torch.Tensor, logits: torch.Tensor, targets: list[dict[str, torch.Tensor]],
             anchors: torch.Tensor, image_size: tuple[int, int], neg_ratio: int = 3,
             min_negatives: int = 3, focal: bool = False
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean per-positive loss of a batch, and its box / class parts for logging.

    Args:
        codes: (N, A, 4) predicted (ty, tx, th, tw); logits (N, A, C), column 0 background.
        targets: per image {"boxes": (G, 4) x1 y1 x2 y2 in input pixels, "labels": (G,)}.
        anchors: (A, 4) normalised (ymin, xmin, ymax, xmax).
    """
    codes, logits = codes.float(), logits.float()
    labels = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
    target_codes = torch.zeros_like(codes)
    for i, t in enumerate(targets):
        gt = to_normalized_yxyx(t["boxes"].to(codes.device), image_size)
        m = match(gt, anchors)
        pos = m >= 0
        labels[i, pos] = t["labels"].to(labels.device)[m[pos]]
        target_codes[i, pos] = encode(gt[m[pos]], anchors[pos])
    positive = labels > 0
    num_pos = positive.sum()
    norm = num_pos.clamp(min=1).float()
    box_loss = F.smooth_l1_loss(codes[positive], target_codes[positive], beta=1.0,
                                reduction="sum") / norm
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                         reduction="none").view_as(labels)
    if focal:
        p_t = torch.exp(-ce)
        cls_loss = ((1 - p_t) ** 2 * ce).sum() / norm
    else:
        # Hard negative mining: rank negatives by their loss, keep neg_ratio per positive.
        neg_loss = ce.clone()
        neg_loss[positive] = -float("inf")
        order = neg_loss.argsort(1, descending=True).argsort(1)
        k = (positive.sum(1, keepdim=True) * neg_ratio).clamp(min=min_negatives)
        hard = order < k
        cls_loss = (ce[positive].sum() + ce[hard & ~positive].sum()) / norm
    total = box_loss + cls_loss
    return total, {"box": float(box_loss.detach()), "class": float(cls_loss.detach()),
                   "positives": float(num_pos)}
