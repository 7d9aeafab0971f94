"""The MobileNetV2 image classifier: backbone, global average pooling, dropout, linear.

Table 2 ends with a 7x7 average pool and a 1x1 conv to k classes; global pooling and a
linear layer compute the same thing for 224x224 inputs and work at any resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.backbone import MobileNetV2Backbone

__all__ = ["MobileNetV2"]


class MobileNetV2(MobileNetV2Backbone):
    """MobileNetV2 classifier. `MobileNetV2(ModelConfig(width=0.5, num_classes=10))`."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(self.config.dropout)
        self.classifier = nn.Linear(self.num_features, self.config.num_classes)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Head activations -> logits, or the pooled 1280-d embedding with `pre_logits`."""
        x = torch.flatten(self.pool(x), 1)
        if pre_logits:
            return x
        return self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (fine-tuning); the config follows so checkpoints stay true."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.config = self.config.replace(num_classes=num_classes)
        device = self.classifier.weight.device
        self.classifier = nn.Linear(self.num_features, num_classes, device=device)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)
