"""The trainer's validation, built here because training must not depend on evaluation: the trainer receives
a callable (embedding model -> metrics) and knows nothing of trial lists or metrics."""
from __future__ import annotations

from typing import Callable

import torch

from sslsv.config import Config
from sslsv.distributed import resolve_device
from sslsv.evaluation.evaluate import evaluate_model
from sslsv.training.trainer import InitialWeights, Trainer, Validator


def trial_validator(config: Config, progress: bool = False) -> Validator:
    """EER and minDCF (0.01, 0.05) of the embedding model on `trainer.validation_trials`, on the trainer's device."""
    device = resolve_device(config.trainer.device)
    trials = config.trainer.validation_trials

    def validate(model: torch.nn.Module) -> dict[str, float]:
        metrics = evaluate_model(model, trials, config, device, progress=progress)
        return {"val/eer": metrics.eer, "val/min_dcf_001": metrics.min_dcf_001, "val/min_dcf_005": metrics.min_dcf_005}

    return validate


def build_trainer(config: Config, restart: bool = False, initial: InitialWeights | None = None) -> Trainer:
    """A Trainer for `config`, validating on its trial list when the config asks for validation."""
    validate: Callable | None = None
    if config.trainer.validate_every and config.trainer.validation_trials:
        validate = trial_validator(config)
    return Trainer(config, restart=restart, validate=validate, initial=initial)
