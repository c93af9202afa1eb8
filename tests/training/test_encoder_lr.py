"""trainer.freeze_encoder_epochs and trainer.encoder_lr_scale (fine-tuning from pre-trained weights): the encoder
does not move during the warm-up, then learns at a fraction of the heads' rate; the heads train throughout."""
import pytest
import torch

from sslsv.config import ConfigError, load_config
from sslsv.methods.heads import class_means
from sslsv.training.trainer import Trainer
from tests.methods.method_helpers import one_thread  # noqa: F401 - tiny models train fastest on one thread
from tests.tiny_corpus import tiny_overrides
from tests.training.test_resume_logs import ROOT

CONFIG = ROOT / "configs/supervised/fast_resnet34.yml"  # a classifier head on top of the encoder

TWO_STEPS = {"trainer.epochs": 2, "trainer.max_steps_per_epoch": 1, "trainer.schedule": "constant"}


def snapshots_per_step(trainer: Trainer) -> list[tuple[dict, dict]]:
    """(encoder tensors, head tensors) at the start of every training forward pass."""
    seen = []
    forward = trainer.method.forward
    encoder_ids = {id(p) for p in trainer.method.encoder.parameters()}

    def recording_forward(batch):
        params = dict(trainer.method.named_parameters())
        seen.append(({k: p.detach().clone() for k, p in params.items() if id(p) in encoder_ids},
                     {k: p.detach().clone() for k, p in params.items() if id(p) not in encoder_ids}))
        return forward(batch)

    trainer.method.forward = recording_forward
    return seen


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_the_encoder_is_frozen_during_the_warm_up_then_trains(tiny_data, tmp_path):
    config = load_config(CONFIG, tiny_overrides(tiny_data, tmp_path / "run", **TWO_STEPS,
                                                **{"trainer.freeze_encoder_epochs": 1}))
    trainer = Trainer(config)
    seen = snapshots_per_step(trainer)
    trainer.fit()
    final = {k: p.detach() for k, p in trainer.method.named_parameters()}
    (encoder0, heads0), (encoder1, heads1) = seen
    assert not changed(encoder0, encoder1), "the encoder moved during the frozen warm-up"
    assert changed(heads0, heads1), "the heads must train during the warm-up"
    assert changed(encoder1, {k: final[k] for k in encoder1}), "the encoder must train after the warm-up"
    # The warm-up left no optimiser state on the encoder before its first real step: exactly one step of state now.
    encoder_groups = [g for g in trainer.optimizer.param_groups if g.get("encoder")]
    assert encoder_groups and all(trainer.optimizer.state[p]["step"] == 1 for g in encoder_groups for p in g["params"])


def test_the_encoder_learns_at_a_fraction_of_the_heads_rate(tiny_data, tmp_path):
    config = load_config(CONFIG, tiny_overrides(tiny_data, tmp_path / "run", **TWO_STEPS,
                                                **{"trainer.encoder_lr_scale": 0.1, "trainer.lr": 0.002}))
    trainer = Trainer(config)
    trainer.fit()
    groups = trainer.optimizer.param_groups
    encoder_params = {id(p) for p in trainer.method.encoder.parameters()}
    assert {g.get("encoder", False) for g in groups} == {True, False}
    for group in groups:
        assert group["lr"] == pytest.approx(0.0002 if group.get("encoder") else 0.002)
        assert all((id(p) in encoder_params) == bool(group.get("encoder")) for p in group["params"])
    # Defaults: one set of groups at the scheduled rate, as before.
    plain = Trainer(load_config(CONFIG, tiny_overrides(tiny_data, tmp_path / "plain", **TWO_STEPS)))
    assert not any(g.get("encoder") for g in plain.optimizer.param_groups)


def test_freezing_every_epoch_is_refused(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="trainer.freeze_encoder_epochs"):
        load_config(CONFIG, tiny_overrides(tiny_data, tmp_path / "run", **TWO_STEPS,
                                           **{"trainer.freeze_encoder_epochs": 2}))


def test_class_means_are_the_means_of_normalised_rows():
    torch.manual_seed(0)
    x = torch.randn(20, 5) * 3
    labels = torch.arange(20) % 4
    means = class_means(x, labels, 5)
    for c in range(4):
        rows = x[labels == c]
        expected = (rows / rows.norm(dim=1, keepdim=True)).mean(0)
        assert torch.allclose(means[c], expected, atol=1e-6)
    assert torch.equal(means[4], torch.zeros(5))  # a class without rows
