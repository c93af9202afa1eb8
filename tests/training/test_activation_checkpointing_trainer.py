"""`trainer.activation_checkpointing: true` (sslsv/encoders/checkpointing.py, called by the trainer once the method
is built and on its device): a tiny DINO training with it ends bit-identical to one without it on a CPU (losses,
weights, BN statistics of student and teacher), and a run saved with it loads into a model built without it. Also the other memory/layout key applied at the same
place in the trainer, `trainer.channels_last`."""
import json
from pathlib import Path

import pytest
import torch

from sslsv.config import load_config
from sslsv.encoders.checkpointing import is_checkpointed
from sslsv.training.trainer import Trainer
from tests.tiny_corpus import make_tiny_corpus, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/dino/fast_resnet34.yml"
DINO = {
    "dataset.views": "[{count: 2, seconds: 0.5}, {count: 2, seconds: 0.25}]",
    "method.hidden_dim": 16, "method.bottleneck_dim": 8, "method.out_dim": 32,
    "trainer.epochs": 1, "trainer.warmup_epochs": 0, "trainer.average_last": 1, "augmentation.strategy": "none",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("data"))


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["train/loss"] for row in rows if "train/loss" in row]


def _trained(corpus, run_dir: Path, checkpointing: bool) -> Trainer:
    overrides = {**DINO, "trainer.activation_checkpointing": str(checkpointing).lower()}
    trainer = Trainer(load_config(CONFIG, tiny_overrides(corpus, run_dir, **overrides)))
    for encoder in (trainer.method.encoder.encoder, trainer.method.teacher_encoder.encoder):
        assert is_checkpointed(encoder.stages[0][0]) == checkpointing
    trainer.fit()
    return trainer


def test_dino_run_is_bit_identical_with_checkpointing(corpus, tmp_path):
    plain = _trained(corpus, tmp_path / "plain", checkpointing=False)
    checkpointed = _trained(corpus, tmp_path / "checkpointed", checkpointing=True)
    assert _losses(tmp_path / "plain") == _losses(tmp_path / "checkpointed") != []
    expected, got = plain.method.state_dict(), checkpointed.method.state_dict()
    assert list(expected) == list(got)
    for key in expected:  # student, teacher, heads, center; BN statistics and num_batches_tracked included
        assert torch.equal(expected[key], got[key]), key
    saved = torch.load(tmp_path / "checkpointed" / "model.pt", map_location="cpu")  # the teacher's state dict
    plain.method.embedding_model().load_state_dict(saved, strict=True)


@pytest.mark.parametrize("setting, nhwc", [(None, False), (True, True), (False, False)])
def test_channels_last_key_sets_the_encoder_layout_on_cpu(corpus, tmp_path, setting, nhwc):
    """trainer.channels_last: null keeps NCHW on a CPU (CUDA only), true converts Fast ResNet-34 there too."""
    overrides = {**DINO} if setting is None else {**DINO, "trainer.channels_last": str(setting).lower()}
    trainer = Trainer(load_config(CONFIG, tiny_overrides(corpus, tmp_path / "run", **overrides)))
    weight = next(p for p in trainer.method.encoder.encoder.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert weight.is_contiguous(memory_format=torch.channels_last) == nhwc
    assert weight.is_contiguous() == (not nhwc)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_cpu_step_releases_freed_heap_before_backward_with_checkpointing(corpus, tmp_path, monkeypatch,
                                                                        checkpointing):
    import sslsv.training.trainer as trainer_module

    calls = []

    def counted() -> bool:
        calls.append(torch.is_grad_enabled())
        return True

    monkeypatch.setattr(trainer_module, "release_freed_host_memory", counted)
    trainer = _trained(corpus, tmp_path / "run", checkpointing=checkpointing)
    assert trainer.position.global_step > 0
    assert len(calls) == (trainer.position.global_step if checkpointing else 0)
