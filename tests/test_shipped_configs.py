"""Every shipped config loads strictly (unknown keys and wrong types are errors), and every registered SSL method
ships the three configs of the methods issue: Fast ResNet-34, ECAPA-TDNN and a demo-sized variant."""
from pathlib import Path

import pytest

from sslsv.config import load_config
from sslsv.pseudo_labels.multistage import load_multistage_config
from sslsv.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yml") if p.parent.name not in ("base", "multistage"))
MULTISTAGE_CONFIGS = sorted((ROOT / "configs" / "multistage").glob("*.yml"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_train_config_loads(path):
    config = load_config(path)
    assert config.method.name in METHODS


@pytest.mark.parametrize("path", MULTISTAGE_CONFIGS, ids=lambda p: p.name)
def test_multistage_config_loads_with_its_round_configs(path):
    spec = load_multistage_config(path)
    for index, round_spec in enumerate(spec.rounds):
        config = load_config(ROOT / round_spec.config, round_spec.overrides)
        assert config.method.name == "pseudo_supervised", f"round {index}"


@pytest.mark.parametrize("method", ["cpc", "simclr", "moco", "deepcluster", "swav", "wmse", "barlow_twins", "vicreg",
                                    "byol", "simsiam", "dino", "supervised"])
def test_every_method_ships_resnet_ecapa_and_demo_configs(method):
    for name in ("fast_resnet34.yml", "ecapa.yml", "fast_resnet34_demo.yml"):
        path = ROOT / "configs" / method / name
        assert path.exists(), path
        assert load_config(path).method.name == method
