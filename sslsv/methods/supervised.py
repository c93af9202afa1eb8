"""Supervised baseline: AAM-softmax on speaker labels (Deng et al., ArcFace, 2019; review section 3.2).

Review Eq. (12):

    L_Sup = -1/B sum_i log( l+(y_i, w_{l_i}) / (l+(y_i, w_{l_i}) + sum_{c != l_i} l-(y_i, w_c)) )
    l+(a, b) = exp(s cos(theta_ab + m)),  l-(a, b) = exp(s cos(theta_ab))

with s = 30 and m = 0.2 (section 4.3). The projector is discarded. The loss is heads.AAMSoftmax with one
sub-centre per class (its docstring gives the one deviation, where theta + m > pi), the classifier that the
pseudo-label rounds (pseudo_supervised.py) and OS-KDFT (os_kdft.py) use too.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sslsv.config import ConfigError
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views
from sslsv.methods.heads import AAMSoftmax
from sslsv.registry import METHODS


@dataclass
class SupervisedConfig:
    scale: float = 30.0  # s in Eq. (12)
    margin: float = 0.2  # m in Eq. (12)

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError("method.scale: must be positive")
        if not 0 <= self.margin < math.pi / 2:
            raise ConfigError("method.margin: must be in [0, pi/2)")


@METHODS.register("supervised", config=SupervisedConfig)
class Supervised(Method):
    """Supervised AAM-softmax baseline (review Eq. 12; s=30, m=0.2) on manifest labels."""

    uses_labels = True
    collapse_rules = ()  # logs no embedding signal: labels guard against collapse

    def __init__(self, encoder, cfg: SupervisedConfig, info: TrainingInfo):
        super().__init__(encoder)
        if info.num_speakers < 2:
            raise ConfigError(f"method.name: supervised training needs at least 2 speakers, the manifest has {info.num_speakers}")
        self.classifier = AAMSoftmax(encoder.embed_dim, info.num_speakers, cfg.scale, cfg.margin)

    def init_classifier(self, rows: torch.Tensor, kind: str = "centroids", seed: int = 0) -> None:
        """Fine-tuning from a pre-trained encoder (sslsv finetune): the classifier starts at the class centroids."""
        self.classifier.initialise(rows, kind, seed)

    def forward(self, batch: Batch) -> StepOutput:
        # Every view is a labelled example; views of equal length share one encoder pass.
        ys = torch.cat(encode_views(self.encoder, batch.views))  # (V*B, D)
        loss, accuracy = self.classifier(ys, batch.labels.repeat(len(batch.views)))
        return StepOutput(loss, {"accuracy": accuracy})
