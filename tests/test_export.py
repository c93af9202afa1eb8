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
    with pytest.raises(ExportError, match="fewer than --epochs 5"):
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


def test_masked_pooling_of_a_padded_row_is_the_pooling_of_the_row_alone():
    """Every registered pooling: masked_pooling over the first `valid` frames equals the pooling of those frames
    alone, and of all frames when every frame is valid (tests the masked forms against sslsv.encoders.pooling)."""
    from sslsv.encoders.pooling import build_pooling
    from sslsv.export import MASKED_POOLINGS, masked_pooling
    from sslsv.registry import POOLINGS

    torch.manual_seed(0)
    x = torch.randn(2, 8, 30)
    for entry in POOLINGS.entries():
        pooling = build_pooling(entry.name, 8).eval()
        assert isinstance(pooling, MASKED_POOLINGS), f"{entry.name}: no masked form in sslsv.export"
        with torch.no_grad():
            torch.testing.assert_close(masked_pooling(pooling, x, torch.tensor([30.0, 30.0])), pooling(x),
                                       atol=1e-5, rtol=1e-5, msg=entry.name)
            padded = masked_pooling(pooling, x, torch.tensor([30.0, 13.0]))[1]
            torch.testing.assert_close(padded, pooling(x[1:, :, :13])[0], atol=1e-5, rtol=1e-5, msg=entry.name)


def _padded(waves):
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in zip(batch, waves):
        row[: len(wave)] = wave
    return batch, lengths


def test_lengths_make_a_padded_batch_give_each_row_its_own_embedding(tmp_path):
    """The export wrapper (PyTorch) of ECAPA-TDNN (squeeze-excitation over time, attentive pooling with global
    context): a row zero-padded into a batch keeps its embedding (cosine > 0.9999); without lengths it does not."""
    from sslsv.export import _ExportModel
    from tests.encoders.test_interface import example_model

    model = example_model("ecapa_tdnn")
    rng = np.random.default_rng(0)
    waves = [torch.from_numpy((0.1 * rng.standard_normal(n)).astype(np.float32)) for n in (9_000, 21_000, 32_000)]
    batch, lengths = _padded(waves)
    wrapped = _ExportModel(model, with_lengths=True, normalize=True).eval()
    with torch.no_grad():
        alone = torch.cat([model(w[None]) for w in waves])
        masked = wrapped(batch, lengths)
        plain = model(batch)
        full = wrapped(batch[:, :21_000], torch.tensor([21_000] * 3))
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(alone, masked).min() > 0.9999
    assert cosine(alone, plain)[0] < 0.99  # what the lengths input fixes
    torch.testing.assert_close(masked.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(full, torch.nn.functional.normalize(model(batch[:, :21_000]), dim=1), atol=1e-5,
                               rtol=0)


def test_export_command_with_lengths_and_normalize(run_dir, tiny_data, tmp_path, capsys):
    """`sslsv export --with-lengths --normalize`: inputs waveform + lengths, unit output; in onnxruntime, tiny
    corpus files padded into one batch keep their own embeddings (cosine > 0.9999)."""
    import onnxruntime as ort
    import soundfile as sf

    from sslsv.cli.run_tools import export_main
    from sslsv.export import padding_cosine

    out = tmp_path / "m.onnx"
    assert export_main([str(run_dir), "-o", str(out), "--with-lengths", "--normalize"]) == 0
    printed = capsys.readouterr().out
    assert "inputs waveform, lengths" in printed and "L2-normalised" in printed and "min cosine" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("waveform", "tensor(float)"),
                                                                ("lengths", "tensor(int64)")]
    assert session.get_modelmeta().custom_metadata_map["normalized"] == "1"
    model, _, _ = load_model(run_dir)
    files = sorted((tiny_data / "tiny/wav").rglob("*.wav"))[:4]
    waves = [sf.read(f, dtype="float32")[0] for f in files]
    assert padding_cosine(model, out, waves) > 0.9999
    batch, lengths = _padded([torch.from_numpy(w) for w in waves])
    got = session.run(None, {"waveform": batch.numpy(), "lengths": lengths.numpy()})[0]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)
