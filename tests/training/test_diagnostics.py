import json
import math

import pytest
import torch

from sslsv.config import ConfigError, load_config
from sslsv.methods.collapse import DEFAULT_RULES, Above, Threshold, resolve_thresholds
from sslsv.methods.dino import DINO
from sslsv.methods.moco import MoCo
from sslsv.methods.signals import cluster_usage_entropy, effective_rank, embedding_std, kl_divergence, softmax_entropy
from sslsv.training.diagnostics import CollapseConfig, CollapseDetector, plot_diagnostics, read_metrics

DINO_RULES, MOCO_RULES = DINO.collapse_rules, MoCo.collapse_rules


def test_effective_rank_identity_like_vs_rank_one():
    assert effective_rank(torch.eye(8)).item() == pytest.approx(8.0, rel=1e-5)
    rank_one = torch.randn(16, 1) @ torch.randn(1, 8)
    assert effective_rank(rank_one).item() == pytest.approx(1.0, abs=1e-3)


def test_entropies():
    assert softmax_entropy(torch.zeros(3, 10)).item() == pytest.approx(math.log(10), rel=1e-6)
    assert softmax_entropy(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert cluster_usage_entropy(torch.arange(12) % 4).item() == pytest.approx(math.log(4), rel=1e-6)
    assert cluster_usage_entropy(torch.zeros(12, dtype=torch.long), 4).item() == pytest.approx(0.0, abs=1e-6)
    assert cluster_usage_entropy(torch.full((5, 4), 0.25)).item() == pytest.approx(math.log(4), rel=1e-6)


def test_kl_and_embedding_std():
    p = torch.softmax(torch.randn(4, 6), dim=1)
    assert kl_divergence(p, torch.log(p)).item() == pytest.approx(0.0, abs=1e-6)
    q = torch.softmax(torch.randn(4, 6), dim=1)
    manual = (p * (p.log() - q.log())).sum(1).mean()
    assert kl_divergence(p, q.log()).item() == pytest.approx(manual.item(), rel=1e-5)
    assert embedding_std(torch.ones(8, 5)).item() == pytest.approx(0.0, abs=1e-7)
    assert embedding_std(torch.randn(4096, 64)).item() == pytest.approx(1 / 8, rel=0.05)  # ~1/sqrt(D)


def test_detector_flags_a_constant_embedding_sequence_after_patience():
    detector = CollapseDetector(CollapseConfig(patience_steps=5), DEFAULT_RULES)
    constant = torch.ones(32, 16) + 1e-6 * torch.randn(32, 16)
    healthy = torch.randn(32, 16)
    for step in range(10):
        assert detector.check(step, {"embedding_std": embedding_std(healthy).item(),
                                     "effective_rank": effective_rank(healthy).item()}) is None
    messages = [detector.check(step, {"embedding_std": embedding_std(constant).item(),
                                      "effective_rank": effective_rank(constant).item()}) for step in range(10, 15)]
    assert messages[:4] == [None] * 4
    assert "complete collapse" in messages[4] and "dimensional collapse" in messages[4]
    assert detector.check(15, {"train/embedding_std": 0.1}) is None  # recovered: streak reset


def test_detector_uniform_and_one_hot_teacher_and_disabled():
    detector = CollapseDetector(CollapseConfig(patience_steps=2, action="stop"), DINO_RULES,
                                {"teacher_entropy": math.log(1000)})
    assert detector.should_stop
    assert detector.check(0, {"teacher_entropy": 6.9}) is None
    assert "informational collapse" in detector.check(1, {"teacher_entropy": 6.9})
    detector = CollapseDetector(CollapseConfig(patience_steps=1), DINO_RULES)
    assert "centering" in detector.check(0, {"teacher_entropy": 0.0})
    disabled = CollapseDetector(CollapseConfig(enabled=False, patience_steps=1), DEFAULT_RULES)
    assert disabled.check(0, {"embedding_std": 0.0}) is None


def test_detector_flags_stale_moco_negatives():
    detector = CollapseDetector(CollapseConfig(patience_steps=3), MOCO_RULES)
    # Measured on the demo corpus: healthy MoCo 0.0002-0.006, MoCo without the momentum encoder 0.26-0.37.
    assert all(detector.check(step, {"negative_gap": 0.006}) is None for step in range(5))
    messages = [detector.check(step, {"train/negative_gap": 0.3}) for step in range(5, 8)]
    assert messages[:2] == [None, None] and "momentum encoder" in messages[2]


def test_detector_tells_a_one_hot_healthy_teacher_from_a_dimensional_collapse():
    """Both teachers are nearly one-hot per sample (entropy ~0.07 nats); only the collapsed one puts every sample
    on the same output, which the usage entropy (of the batch's mean distribution) shows."""
    logits = torch.full((64, 256), -20.0)
    healthy, collapsed = logits.clone(), logits.clone()
    healthy[torch.arange(64), torch.arange(64) * 4] = 0.0
    collapsed[:, 7] = 0.0
    detector = CollapseDetector(CollapseConfig(patience_steps=1), DINO_RULES)
    for probabilities, flagged in ((torch.softmax(healthy, 1), False), (torch.softmax(collapsed, 1), True)):
        metrics = {"teacher_entropy": softmax_entropy(probabilities.log()).item() + 0.07,
                   "teacher_usage_entropy": cluster_usage_entropy(probabilities).item()}
        message = CollapseDetector(CollapseConfig(patience_steps=1), DINO_RULES).check(0, metrics)
        assert (message is not None and "teacher usage entropy" in message) == flagged
    assert detector.check(0, {"teacher_usage_entropy": math.log(64)}) is None


def test_plot_diagnostics(tmp_path):
    lines = [{"epoch": 1, "step": s, "loss": 1.0 / s, "train/embedding_std": 0.1, "train/teacher_entropy": 0.5}
             for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = plot_diagnostics(tmp_path, tmp_path / "plots" / "diag.png")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError):
        plot_diagnostics(tmp_path / "missing")


def test_read_metrics_keeps_the_resumed_runs_lines(tmp_path):
    # Interrupted after step 4 with a checkpoint at step 2; the resumed run logs steps 3 and 4 again. An older run's
    # names: `loss` reads as `train/loss`.
    lines = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "val/eer": 40.0},
             {"step": 3, "loss": 9.0}, {"step": 4, "loss": 8.0}, {"step": 3, "loss": 3.0}, {"step": 4, "loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    records = read_metrics(tmp_path)
    assert [(r["step"], r.get("train/loss")) for r in records] == [(1, 5.0), (2, 4.0), (2, None), (3, 3.0), (4, 2.0)]


def test_detector_flags_a_teacher_that_sharpens_alike_for_every_sample():
    """DINO without centering before one-hot: every sample's teacher is the same sharpened distribution."""
    bound = math.log(4096)
    same = torch.softmax(torch.linspace(0, 30, 4096).expand(64, -1), dim=1)  # one distribution for all samples
    spread = torch.softmax(torch.randn(64, 4096) * 4, dim=1)  # as sharp, different per sample
    for probabilities, flagged in ((same, True), (spread, False)):
        metrics = {"teacher_entropy": softmax_entropy(probabilities.log()).item(),
                   "teacher_usage_entropy": cluster_usage_entropy(probabilities).item()}
        assert metrics["teacher_entropy"] < 0.75 * bound
        detector = CollapseDetector(CollapseConfig(patience_steps=2), DINO_RULES, {"teacher_entropy": bound})
        messages = [detector.check(step, metrics) for step in range(2)]
        assert (messages[1] is not None and "same way for every sample" in messages[1]) == flagged
    # Measured on the demo corpus, centering on (tau_t 0.07, step 1): entropy 7.92, usage 7.92 of 8.32: not yet
    # sharpened enough to judge.
    assert CollapseDetector(CollapseConfig(patience_steps=1), DINO_RULES, {"teacher_entropy": bound}).check(
        0, {"teacher_entropy": 7.915, "teacher_usage_entropy": 7.921}) is None


def test_rules_keep_the_former_thresholds_and_defaults():
    """The thresholds the methods declare, with the defaults of the former fixed CollapseConfig fields."""
    from sslsv.methods.deepcluster import DeepCluster
    from sslsv.methods.simclr import SimCLR
    from sslsv.methods.swav import SwAV
    declared = {}
    for method in (DINO, MoCo, SimCLR, SwAV, DeepCluster):
        declared.update(resolve_thresholds(method.collapse_rules, {}))
    assert declared == {"min_embedding_std": 0.002, "min_effective_rank": 1.5, "min_teacher_entropy": 0.03,
                        "min_teacher_usage_entropy": 0.5, "teacher_sharpened_fraction": 0.75,
                        "min_teacher_information_ratio": 0.05, "max_entropy_ratio": 0.995, "max_negative_gap": 0.1,
                        "min_cluster_entropy": 0.5, "min_kl_teacher_student": None}
    assert set(resolve_thresholds(SimCLR.collapse_rules, {})) == {"min_embedding_std", "min_effective_rank",
                                                                   "max_entropy_ratio"}


def test_thresholds_are_overridden_by_name_and_unknown_names_refused():
    looser = CollapseDetector(CollapseConfig(patience_steps=1, thresholds={"min_teacher_entropy": 0.01}), DINO_RULES)
    assert looser.check(0, {"teacher_entropy": 0.015}) is None
    assert "centering" in CollapseDetector(CollapseConfig(patience_steps=1), DINO_RULES).check(
        0, {"teacher_entropy": 0.015})
    off = CollapseDetector(CollapseConfig(patience_steps=1, thresholds={"min_teacher_entropy": None}), DINO_RULES)
    assert off.check(0, {"teacher_entropy": 0.0}) is None
    kl = CollapseDetector(CollapseConfig(patience_steps=1, thresholds={"min_kl_teacher_student": 0.01}), DINO_RULES)
    assert "constant outputs" in kl.check(0, {"kl_teacher_student": 1e-4})
    with pytest.raises(ConfigError, match=r"collapse\.thresholds\.max_negative_gap: .*valid: .*min_teacher_entropy"):
        CollapseDetector(CollapseConfig(thresholds={"max_negative_gap": 0.2}), DINO_RULES)  # a MoCo threshold
    with pytest.raises(ConfigError, match=r"collapse\.thresholds\.max_entropy_ratio: 1.5 must be in \(0, 1\]"):
        CollapseDetector(CollapseConfig(thresholds={"max_entropy_ratio": 1.5}), MOCO_RULES)
    with pytest.raises(ConfigError, match="finite"):
        CollapseConfig(thresholds={"min_embedding_std": float("nan")})


def test_thresholds_from_a_dotted_override():
    config = load_config("configs/dino/fast_resnet34_demo.yml", ["collapse.thresholds.min_teacher_entropy=0.02"])
    assert config.collapse.thresholds == {"min_teacher_entropy": 0.02}
    with pytest.raises(ConfigError, match="collapse.thresholds.min_teacher_entropy"):
        load_config("configs/dino/fast_resnet34_demo.yml", ["collapse.thresholds.min_teacher_entropy=inf"])


def test_detector_applies_any_declared_rule_and_restores_its_streaks():
    """The detector knows no signal by name; its streaks survive a checkpoint."""
    rules = (Above("loudness", Threshold("max_loudness", 3.0), "too loud"),)
    detector = CollapseDetector(CollapseConfig(patience_steps=3), rules)
    assert detector.check(0, {"train/loudness": 4.0}) is None
    assert detector.check(1, {"loudness": 4.0, "embedding_std": 0.0}) is None  # undeclared signal: not watched
    resumed = CollapseDetector(CollapseConfig(patience_steps=3), rules)
    resumed.load_state_dict(detector.state_dict())
    message = resumed.check(2, {"loudness": 5.0})
    assert message == "collapse suspected at step 2 (for 3 checks): loudness 5 > 3: too loud"
