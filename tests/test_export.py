"""ONNX export matches PyTorch; checkpoint averaging."""
from pathlib import Path

import numpy as np
import pytest
import torch

from sslsv.runs import load_model
from sslsv.export import ConvLogMel, ExportError, average_checkpoints, export_onnx, last_epoch_weights, verify_onnx
from sslsv.runs import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


def test_conv_frontend_equals_torchaudio(run_dir):
    model, _, _ = load_model(run_dir)
    x = torch.randn(3, 12_345)
    np.testing.assert_allclose(ConvLogMel(model.frontend)(x).numpy(), model.frontend(x).numpy(), atol=2e-4)


def test_onnx_matches_pytorch_for_two_lengths_and_batches(run_dir, tmp_path):
    import onnxruntime as ort

    model, config, _ = load_model(run_dir)
    path = export_onnx(model, tmp_path / "model.onnx", config.features.sample_rate, check=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, samples in [(1, 8000), (4, 21_111)]:
        x = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
        got = session.run(None, {"waveform": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, model.embed_dim)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert np.abs(want).max() > 1e-3  # the comparison is not between near-zero vectors
    assert verify_onnx(model, path, config.features.sample_rate) <= 1e-4


def test_average_checkpoints(run_dir, tmp_path):
    paths = last_epoch_weights(run_dir, 2)
    out = average_checkpoints(paths, tmp_path / "avg.pt")
    a, b, avg = load_checkpoint(paths[0]), load_checkpoint(paths[1]), load_checkpoint(out)
    key = next(k for k, v in avg.items() if torch.is_floating_point(v))
    torch.testing.assert_close(avg[key], (a[key] + b[key]) / 2)
    with pytest.raises(ExportError, match="fewer than --last 5"):
        last_epoch_weights(run_dir, 5)
    with pytest.raises(ExportError, match="not found: .*nope.pt"):
        average_checkpoints([tmp_path / "nope.pt"], tmp_path / "x.pt")


def test_onnx_export_of_a_gru_pooled_encoder(tmp_path):
    """CPC's read-out option (encoder.pooling: gru): the recurrent pooling exports and matches PyTorch."""
    from sslsv.config import FeaturesConfig, Spec
    from sslsv.encoders.base import build_speaker_model
    from sslsv.encoders.fast_resnet34 import FastResNet34Config

    torch.manual_seed(0)
    spec = Spec("fast_resnet34", FastResNet34Config(base_width=4, pooling="gru", head=False, embed_dim=256))
    model = build_speaker_model(spec, FeaturesConfig(n_mels=24)).eval()
    path = export_onnx(model, tmp_path / "gru.onnx", 16000, check=False)
    assert verify_onnx(model, path, 16000) <= 1e-4
