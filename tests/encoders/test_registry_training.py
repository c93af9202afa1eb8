"""Every registered encoder family trains for a few steps with SimCLR and with the supervised method on the tiny
corpus, at the tiny size of the example it registers, and its saved run reloads into an embedding model of the
declared size.

The families come from the registry itself (tests/encoders/encoder_examples.py): presets (ecapa_tdnn_c512,
redimnet_b3, ...) are covered by their family; a newly registered encoder that declares no example and is no
preset of a family fails `test_every_registered_encoder_has_a_training_smoke_test`.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from sslsv.config import load_config
from sslsv.encoders.base import Encoder, count_parameters
from sslsv.registry import ENCODERS, Entry
from sslsv.runs import load_model
from sslsv.training.trainer import Trainer
from tests.encoders.encoder_examples import (
    example_embed_dim,
    example_overrides,
    families,
    family_of,
    uncovered_encoders,
)
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = [entry.name for entry in families()]
METHODS = {
    "simclr": [],
    "supervised": ["method.name=supervised", "dataset.views=[{count: 1, seconds: 0.5}]"],
}


def _logged_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["train/loss"] for r in records if "train/loss" in r]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_encoder_trains_and_reloads(tiny_data, tmp_path, family, method):
    embed_dim = example_embed_dim(family)
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_overrides(tiny_data, run_dir, **{"dataset.batch_size": 4})
                 if not o.startswith("encoder.")]
    overrides += [*example_overrides(family), *METHODS[method],
                  "trainer.epochs=1", "trainer.max_steps_per_epoch=2", "trainer.average_last=1",
                  "trainer.validate_every=0", "augmentation.strategy=none"]
    config = load_config(ROOT / "configs/simclr/fast_resnet34.yml", overrides)
    assert (config.encoder.name, config.method.name) == (family, method)
    assert config.encoder.options.embed_dim == embed_dim

    Trainer(config).fit()

    losses = _logged_losses(run_dir)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    assert (run_dir / "model.pt").exists()
    model, loaded, _ = load_model(run_dir)
    assert loaded.encoder.name == family
    assert count_parameters(model) < 100_000  # the tiny widths took effect (full sizes: 1.4 M to 75 M)
    with torch.no_grad():
        embedding = model(0.1 * torch.randn(1, int(0.7 * loaded.features.sample_rate)))
    assert embedding.shape == (1, embed_dim) and torch.isfinite(embedding).all()


def test_every_registered_encoder_has_a_training_smoke_test():
    assert {"fast_resnet34", "ecapa_tdnn", "redimnet", "sv_mixer", "ssrfnet"} <= set(FAMILIES)
    uncovered = uncovered_encoders()
    assert not uncovered, (f"registered encoders without a tiny example (register one with "
                           f"`@ENCODERS.register(name, Config, example={{'encoder': {{...}}}})`): {uncovered}")


@dataclass
class _NewConfig:
    embed_dim: int = 8


class _NewEncoder(Encoder):
    def __init__(self, cfg: _NewConfig, in_features: int):
        super().__init__()
        self.embed_dim = cfg.embed_dim
        self.linear = nn.Linear(in_features, cfg.embed_dim)


def test_presets_are_covered_by_their_family_and_a_new_family_is_not():
    covered_by = families()
    by_name = {entry.name: entry for entry in covered_by}
    assert family_of(ENCODERS.get("redimnet_b3"), covered_by) is by_name["redimnet"]  # builds a ReDimNet
    assert family_of(ENCODERS.get("ecapa_tdnn_c512"), covered_by) is by_name["ecapa_tdnn"]
    assert family_of(Entry("new_family", _NewEncoder, _NewConfig), covered_by) is None
