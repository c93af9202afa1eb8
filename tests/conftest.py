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
