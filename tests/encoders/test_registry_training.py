"""Every registered encoder family trains for a few steps with SimCLR and with the supervised method on the tiny
corpus, at tiny widths, and its saved run reloads into an embedding model of the declared size.

Presets (ecapa_tdnn_c512, redimnet_b3, ...) are covered by their generic family; a newly registered encoder that
is neither a family below nor a preset of one fails `test_every_registered_encoder_has_a_training_smoke_test`.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from sslsv.config import load_config
from sslsv.encoders.base import count_parameters
from sslsv.evaluation.evaluate import load_model
from sslsv.registry import ENCODERS, load_all
from sslsv.training.trainer import Trainer
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
TINY_MIXER = ["conv_channels=16", "hidden_size=32", "layers=2", "group_dim=8", "time_kernel=9"]


def _stages(*rows: tuple) -> str:
    """`encoder.stages=[...]` for ReDimNet-style stage tables of (stride, blocks, conv_exp, att_red) rows."""
    items = ", ".join(f"{{stride: {s}, blocks: {b}, conv_exp: {e}, att_red: {'null' if r is None else r}}}"
                      for s, b, e, r in rows)
    return f"encoder.stages=[{items}]"


# family -> (tiny `encoder.*` / `features.*` overrides after `encoder.name=<family>`, declared embed_dim)
FAMILIES = {
    "fast_resnet34": (["encoder.base_width=4", "encoder.layers=[1, 1, 1, 1]", "encoder.embed_dim=32"], 32),
    "fast_resnet34_ms": (["encoder.aggregation=msea", "encoder.fpm=fpm_tc", "encoder.fpm_channels=8",
                          "encoder.base_width=4", "encoder.layers=[1, 1, 1, 1]", "encoder.embed_dim=24"], 24),
    "ecapa_tdnn": (["encoder.channels=32", "encoder.last_channels=96", "encoder.se_channels=8",
                    "encoder.attention_channels=8", "encoder.embed_dim=16"], 16),
    "redimnet": (["features.n_mels=12", "encoder.freq_bins=12", "encoder.channels=4", "encoder.group_divisor=2",
                  _stages((1, 1, 1, 4), (2, 1, 2, 4), (3, 1, 1, None)),
                  "encoder.pool_bottleneck=8", "encoder.embed_dim=16"], 16),
    "sv_mixer": ([f"encoder.{o}" for o in TINY_MIXER] + ["encoder.pool_bottleneck=8", "encoder.embed_dim=12"], 12),
    "ssrfnet": ([f"encoder.sv_mixer.{o}" for o in TINY_MIXER]
                + ["encoder.n_mels=20", "encoder.freq_bins=8", "encoder.channels=4", "encoder.group_size=2",
                   "encoder.fusion_groups=2",
                   _stages((1, 1, 1, 4), (2, 1, 1, 4), (2, 1, 2, 2)),
                   "encoder.pool_bottleneck=8", "encoder.embed_dim=12"], 12),
    "sv_mixer_lap": ([f"encoder.sv_mixer.{o}" for o in TINY_MIXER]
                     + ["encoder.heads=4", "encoder.lap_dim=16", "encoder.pool_bottleneck=8",
                        "encoder.embed_dim=12"], 12),
    "sv_mixer_unipool": ([f"encoder.sv_mixer.{o}" for o in TINY_MIXER]
                         + ["encoder.width=4", "encoder.heads=4", "encoder.embed_dim=12"], 12),
}
METHODS = {
    "simclr": [],
    "supervised": ["method.name=supervised", "dataset.views=[{count: 1, seconds: 0.5}]"],
}


def _logged_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_encoder_trains_and_reloads(tiny_data, tmp_path, family, method):
    encoder_overrides, embed_dim = FAMILIES[family]
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_overrides(tiny_data, run_dir, **{"dataset.batch_size": 4})
                 if not o.startswith("encoder.")]
    overrides += [f"encoder.name={family}", *encoder_overrides, *METHODS[method],
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


def _family_of(name: str) -> str | None:
    """`name` itself when it is a tested family; else the tested family it is a preset of: the longest family that
    prefixes it (`redimnet_b3` -> `redimnet`) and is defined in the same module (so `sv_mixer_lap`, a different
    encoder in another module, is not taken for an `sv_mixer` preset)."""
    if name in FAMILIES:
        return name
    module = ENCODERS.get(name).obj.__module__
    candidates = [f for f in FAMILIES if name.startswith(f + "_") and ENCODERS.get(f).obj.__module__ == module]
    return max(candidates, key=len, default=None)


def test_every_registered_encoder_has_a_training_smoke_test():
    load_all()
    names = ENCODERS.names()
    assert set(FAMILIES) <= set(names), f"tested families that are not registered: {set(FAMILIES) - set(names)}"
    uncovered = [name for name in names if _family_of(name) is None]
    assert not uncovered, f"registered encoders without a tiny training test in {Path(__file__).name}: {uncovered}"
    assert _family_of("ecapa_tdnn_c512") == "ecapa_tdnn" and _family_of("redimnet_b3") == "redimnet"
