"""The trainer's validation, built here because training must not depend on evaluation: the trainer receives
a callable (embedding model -> metrics) and knows nothing of trial lists or metrics.

Everything the validation needs is checked when the trainer is built, before its first step, so that a bad
validation list fails in seconds rather than after an epoch: the list itself, the audio file of every utterance
it names, and `trainer.tracked_metric` (one of the keys the validation returns)."""
from __future__ import annotations

from typing import Callable

import torch

from sslsv.config import VALIDATION_METRICS, Config, ConfigError
from sslsv.distributed import resolve_device
from sslsv.evaluation.evaluate import check_trials, evaluate_model
from sslsv.training.trainer import InitialWeights, Trainer, Validator


def trial_validator(config: Config, progress: bool = False) -> Validator:
    """EER and minDCF (0.01, 0.05) of the embedding model on `trainer.validation_trials`, on the trainer's device.

    The list is resolved and checked now (sslsv.evaluation.evaluate.check_trials), not at the first validation.

    Raises:
        TrialsError: an unusable validation list or a missing audio file (named with its line).
    """
    device = resolve_device(config.trainer.device)
    trials = check_trials(config.trainer.validation_trials, config)

    def validate(model: torch.nn.Module) -> dict[str, float]:
        metrics = evaluate_model(model, trials, config, device, progress=progress)
        # the keys of sslsv.config.VALIDATION_METRICS, which trainer.tracked_metric is checked against
        return {"val/eer": metrics.eer, "val/min_dcf_001": metrics.min_dcf_001, "val/min_dcf_005": metrics.min_dcf_005}

    return validate


def build_trainer(config: Config, restart: bool = False, initial: InitialWeights | None = None) -> Trainer:
    """A Trainer for `config`, validating on its trial list when the config asks for validation.

    Raises:
        ConfigError: `trainer.tracked_metric` is not a validation metric.
        TrialsError: an unusable validation list or a missing audio file, before the Trainer is built.
    """
    validate: Callable | None = None
    if config.trainer.validate_every and config.trainer.validation_trials:
        if config.trainer.tracked_metric not in VALIDATION_METRICS:
            raise ConfigError(f"trainer.tracked_metric: {config.trainer.tracked_metric!r} is not a validation "
                              f"metric; choose one of {', '.join(VALIDATION_METRICS)}")
        validate = trial_validator(config)
    return Trainer(config, restart=restart, validate=validate, initial=initial)
