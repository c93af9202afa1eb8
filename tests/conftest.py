import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny tone corpus of tests/tiny_corpus.py, built once per session; returns the data root."""
    from tests.tiny_corpus import make_tiny_corpus

    return make_tiny_corpus(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """A SimCLR Fast ResNet-34 run trained for 2 epochs on the tiny corpus, shared by the tests that only read it."""
    from pathlib import Path

    from sslsv.config import load_config
    from sslsv.training.trainer import Trainer
    from tests.tiny_corpus import tiny_overrides

    config_path = Path(__file__).resolve().parents[1] / "configs/simclr/fast_resnet34.yml"
    run_dir = tmp_path_factory.mktemp("models") / "simclr" / "tiny"
    Trainer(load_config(config_path, tiny_overrides(tiny_data, run_dir, **{"trainer.epochs": 2}))).fit()
    return run_dir
