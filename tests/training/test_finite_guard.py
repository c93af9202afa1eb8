"""Finite or nothing: no optimiser step on NaN/Inf gradients, no file written from a state holding NaN/Inf, a finite
checkpoint kept and resumable, and diagnostics that report non-finite input instead of crashing."""
import math
from pathlib import Path

import pytest
import torch

from sslsv.config import load_config
from sslsv.methods.signals import effective_rank, kl_divergence, method_metrics
from sslsv.methods.wmse import whiten
from sslsv.training.diagnostics import CollapseDetector
from sslsv.training.trainer import Trainer, TrainingError
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"


def tiny_trainer(data: Path, run: Path, **overrides) -> Trainer:
    return Trainer(load_config(CONFIG, tiny_overrides(data, run, **{"augmentation.strategy": "none", **overrides})))


def saved_non_finite(run: Path) -> list[str]:
    """Every NaN/Inf tensor in every file the run wrote: (file, tensor name)."""
    from sslsv.runs import non_finite_entries

    return [f"{path.name}:{name}" for path in sorted(run.rglob("*.pt"))
            for name in non_finite_entries(torch.load(path, weights_only=False))]


def test_huge_learning_rate_after_a_good_epoch_saves_nothing_non_finite(tiny_data, tmp_path):
    run = tmp_path / "run"
    tiny_trainer(tiny_data, run, **{"trainer.epochs": 1}).fit()
    good = sorted((run / "checkpoints").glob("checkpoint_*.pt"))
    # lr=1e9 keeps the loss finite but drives BatchNorm running_var to inf: caught at the next log step
    with pytest.raises(TrainingError, match=r"non-finite values \(NaN/Inf\) at epoch 2 step \d .*running_var") as error:
        tiny_trainer(tiny_data, run, **{"trainer.epochs": 3, "trainer.lr": 1e9, "trainer.log_every_steps": 10}).fit()
    assert f"last good checkpoint is kept: {good[-1]}" in str(error.value) and "trainer.lr=" in str(error.value)
    assert sorted((run / "checkpoints").glob("checkpoint_*.pt")) == good  # nothing new written, nothing pruned
    assert saved_non_finite(run) == []
    # the kept checkpoint resumes with a sane learning rate
    summary = tiny_trainer(tiny_data, run, **{"trainer.epochs": 2}).fit()
    assert summary["epochs"] == 2 and saved_non_finite(run) == []


def test_non_finite_gradient_stops_before_the_optimiser_step(tiny_data, tmp_path):
    trainer = tiny_trainer(tiny_data, tmp_path / "run", **{"trainer.checkpoint_every_steps": 1})
    name, param = next(iter(trainer.method.named_parameters()))
    calls = {"n": 0}

    def poison_on_third_step(grad):
        calls["n"] += 1
        return grad * math.inf if calls["n"] == 3 else grad

    param.register_hook(poison_on_third_step)
    with pytest.raises(TrainingError, match=rf"gradients are not finite \({name}\) at epoch 1, step 3 "
                                            rf"\(global step 3\); training stopped before the optimiser step"):
        trainer.fit()
    kept = sorted((tmp_path / "run/checkpoints").glob("checkpoint_*.pt"))
    assert kept[-1].name.endswith("_s00000002.pt")
    # the failed step changed no weight (its forward pass did update BN statistics, which nothing saves)
    saved = torch.load(kept[-1], weights_only=False)["method"]
    assert all(torch.equal(saved[k], v) for k, v in trainer.method.named_parameters())


def test_fp16_steps_skipped_by_the_grad_scaler_are_not_failures(tiny_data, tmp_path):
    trainer = tiny_trainer(tiny_data, tmp_path / "run", **{"trainer.amp": "fp16", "trainer.epochs": 1})
    param = next(iter(trainer.method.parameters()))
    param.register_hook(lambda grad: grad * math.inf)  # every step overflows
    scale = trainer.scaler.get_scale()
    summary = trainer.fit()
    assert summary["steps"] == trainer.steps_per_epoch
    assert trainer.scaler.get_scale() < scale  # the scaler saw the inf gradients and skipped those steps


def test_a_non_finite_optimizer_state_is_never_written(tiny_data, tmp_path):
    # Log lines far apart: only the save-time check can see the optimiser state.
    trainer = tiny_trainer(tiny_data, tmp_path / "run",
                           **{"trainer.checkpoint_every_steps": 1, "trainer.log_every_steps": 100})
    original = trainer.method.after_optimizer_step

    def poison_after_second_step(progress):
        original(progress)
        if trainer.position.global_step == 1:  # incremented after this hook: the second step
            next(iter(trainer.optimizer.state.values()))["exp_avg_sq"].fill_(math.inf)

    trainer.method.after_optimizer_step = poison_after_second_step
    with pytest.raises(TrainingError, match=r"at epoch 1 step 2 \(global step 2\) in optimizer\.state\.0\.exp_avg_sq; "
                                            r"training stopped and .*checkpoint_e0000_s00000002\.pt was not written"):
        trainer.fit()
    kept = sorted((tmp_path / "run/checkpoints").glob("checkpoint_*.pt"))
    assert [p.name for p in kept] == ["checkpoint_e0000_s00000001.pt"]
    assert saved_non_finite(tmp_path / "run") == []


def test_non_finite_embeddings_end_in_the_loss_message_not_an_svd_traceback(tiny_data, tmp_path):
    trainer = tiny_trainer(tiny_data, tmp_path / "run")
    trainer.method.encoder.register_forward_hook(lambda module, inputs, output: output * math.nan)
    with pytest.raises(TrainingError, match="loss is nan at epoch 1, step 1"):
        trainer.fit()


def test_signals_report_nan_for_non_finite_input():
    z = torch.randn(16, 8)
    assert 1 <= float(effective_rank(z)) <= 8
    for bad in (math.nan, math.inf):
        poisoned = z.clone()
        poisoned[3, 2] = bad
        assert math.isnan(float(effective_rank(poisoned)))
        assert all(math.isnan(float(v)) for v in method_metrics(poisoned).values())
    p = torch.softmax(torch.randn(4, 5), dim=1)
    assert math.isnan(float(kl_divergence(torch.full_like(p, math.nan), p.log())))  # not 0, "no divergence"
    assert torch.isnan(whiten(torch.full((8, 4), math.nan))).all()  # W-MSE: a NaN loss, not a whitening error


def test_collapse_detector_skips_non_finite_signals():
    from sslsv.config import CollapseConfig
    from sslsv.methods.collapse import DEFAULT_RULES

    detector = CollapseDetector(CollapseConfig(patience_steps=1), DEFAULT_RULES)
    assert detector.check(1, {"embedding_std": math.nan, "effective_rank": math.inf}) is None


def test_diagnostics_plot_accepts_non_finite_values(tmp_path):
    from sslsv.training.diagnostics import plot_diagnostics

    lines = ['{"epoch": 1, "step": 1, "loss": 2.0, "train/effective_rank": NaN}',
             '{"epoch": 1, "step": 2, "loss": Infinity, "train/effective_rank": 3.0}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert plot_diagnostics(tmp_path).stat().st_size > 0
