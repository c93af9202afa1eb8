import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from sslsv.audio.io import AudioError, read_audio
from sslsv.evaluation.embeddings import Crops, extract_embeddings, plan_batches, read_crops
from sslsv.evaluation.errors import EvaluationError

SR = 16000


class ToyModel(torch.nn.Module):
    """Mean of |frames| then a linear layer; records the shape of every batch it sees."""

    def __init__(self, frame: int = 10, dim: int = 6):
        super().__init__()
        torch.manual_seed(0)
        self.frame = frame
        self.linear = torch.nn.Linear(frame, dim)
        self.calls: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and x.dim() == 2
        self.calls.append(tuple(x.shape))
        frames = x[:, : x.shape[1] // self.frame * self.frame].reshape(x.shape[0], -1, self.frame)
        return self.linear(frames.abs().mean(dim=1))


def _write(path, length, rate=SR, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    data = (rng.uniform(-0.5, 0.5, size=(length, channels))).astype(np.float32)
    subtype = "FLOAT" if str(path).endswith(".wav") else None
    sf.write(str(path), data if channels > 1 else data[:, 0], rate, subtype=subtype)
    return data.mean(axis=1) if channels > 1 else data[:, 0]


def _one_by_one(model, waves):
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(np.asarray(w, np.float32))[None]) for w in waves])


@pytest.fixture
def corpus(tmp_path):
    """Mixed lengths with several exact duplicates of a length, in shuffled order."""
    lengths = [4000, 8000, 4000, 12000, 8000, 4000, 8010, 3990, 12000, 5000]
    paths, waves = [], []
    for i, n in enumerate(lengths):
        path = tmp_path / f"spk{i % 3}" / f"utt{i}.wav"
        path.parent.mkdir(exist_ok=True)
        waves.append(_write(path, n, seed=i))
        paths.append(str(path.relative_to(tmp_path)))
    return tmp_path, paths, waves, lengths


def test_plan_batches_rules():
    lengths = [100, 100, 101, 99, 200, 100]
    batches = plan_batches(lengths, max_samples=1e9, max_trim=0.0)
    for b in batches:
        assert len({lengths[i] for i in b}) == 1
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    batches = plan_batches(lengths, max_samples=1e9, max_trim=0.02)
    assert sorted(len(b) for b in batches) == [1, 5]
    for b in batches:
        shortest = min(lengths[i] for i in b)
        assert all(lengths[i] - shortest <= 0.02 * lengths[i] for i in b)
    # Budget counts audio fed to the model: 3 * 100 <= 300 but 4 * 99 > 300.
    batches = plan_batches([100] * 7, max_samples=300, max_trim=0.0)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [len(b) for b in plan_batches([1000, 1000], max_samples=10, max_trim=0.5)] == [1, 1]
    # max_files caps a batch; equal lengths stay in their order (consecutive chunks).
    batches = plan_batches([100] * 7, max_samples=1e9, max_trim=0.0, max_files=3)
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_equal_to_one_by_one_with_max_trim_zero(corpus, num_workers):
    root, paths, waves, lengths = corpus
    model = ToyModel()
    emb = extract_embeddings(model, paths, SR, "cpu", max_trim=0.0, root=root, progress=False,
                             num_workers=num_workers)
    assert emb.shape == (len(paths), 6) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert not emb.is_inference()
    calls = list(model.calls)
    torch.testing.assert_close(emb, _one_by_one(model, waves), rtol=1e-5, atol=1e-6)
    # Equal lengths were batched together, nothing else was.
    assert sorted(calls) == sorted([(3, 4000), (2, 8000), (2, 12000), (1, 8010), (1, 3990), (1, 5000)])


def test_order_preserved_with_absolute_paths_and_small_budget(corpus):
    root, paths, waves, lengths = corpus
    model = ToyModel()
    absolute = [str(root / p) for p in paths]
    emb = extract_embeddings(model, absolute[::-1], SR, "cpu", batch_seconds=8000 / SR, max_trim=0.0,
                             progress=False, num_workers=0)
    calls = list(model.calls)
    torch.testing.assert_close(emb, _one_by_one(model, waves[::-1]), rtol=1e-5, atol=1e-6)
    assert all(b * n <= 8000 or b == 1 for b, n in calls) and max(b for b, _ in calls) == 2


def test_trimmed_batches_equal_model_on_trimmed_waveforms(corpus):
    root, paths, waves, lengths = corpus
    model = ToyModel()
    emb = extract_embeddings(model, paths, SR, "cpu", max_trim=0.01, root=root, progress=False, num_workers=0)
    # 3990 and 4000 (x3) share a batch cut to 3990; 8000 (x2) and 8010 share one cut to 8000.
    assert sorted(model.calls) == sorted([(4, 3990), (3, 8000), (2, 12000), (1, 5000)])
    expected = []
    for w, n in zip(waves, lengths):
        cut = 3990 if n in (3990, 4000) else 8000 if n in (8000, 8010) else n
        expected.append(w[:cut])
    torch.testing.assert_close(emb, _one_by_one(model, expected), rtol=1e-5, atol=1e-6)
    # The trimmed files really differ from their full-length embeddings.
    full = _one_by_one(model, waves)
    assert (emb[6] - full[6]).abs().max() > 1e-4


def test_resampling_and_stereo(tmp_path):
    w8k = _write(tmp_path / "a.wav", 8000, rate=8000, seed=1)
    stereo = _write(tmp_path / "b.flac", 16000, rate=SR, channels=2, seed=2)
    w441 = _write(tmp_path / "c.wav", 44100, rate=44100, seed=3)
    model = ToyModel()
    emb = extract_embeddings(model, ["a.wav", "b.flac", "c.wav"], SR, "cpu", max_trim=0.0, root=tmp_path,
                             progress=False, num_workers=0)
    up = resample_poly(w8k, 2, 1).astype(np.float32)
    down = resample_poly(w441, 160, 441).astype(np.float32)
    assert len(up) == 16000 and len(down) == 16000
    np.testing.assert_allclose(read_audio(str(tmp_path / "a.wav"), SR), up, atol=1e-6)
    np.testing.assert_allclose(read_audio(str(tmp_path / "b.flac"), SR), stereo, atol=1e-4)  # FLAC is 16-bit
    expected = _one_by_one(model, [up, read_audio(str(tmp_path / "b.flac"), SR), down])
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_file_is_named(tmp_path, num_workers):
    _write(tmp_path / "good.wav", 4000)
    (tmp_path / "broken.wav").write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="broken.wav"):
        extract_embeddings(ToyModel(), ["good.wav", "broken.wav"], SR, "cpu", root=tmp_path, progress=False,
                           num_workers=num_workers)
    with pytest.raises(AudioError, match="missing.wav"):
        extract_embeddings(ToyModel(), ["good.wav", "missing.wav"], SR, "cpu", root=tmp_path, progress=False,
                           num_workers=num_workers)


def test_bad_model_output_and_empty(tmp_path):
    _write(tmp_path / "a.wav", 4000)
    with pytest.raises(ValueError, match="batch, dim"):
        extract_embeddings(lambda x: x.mean(), ["a.wav"], SR, "cpu", root=tmp_path, progress=False, num_workers=0)
    assert extract_embeddings(ToyModel(), [], SR, "cpu", progress=False).shape == (0, 0)


def test_read_failure_inside_dataloader_worker_is_named(tmp_path, monkeypatch):
    """Header fine, data read fails in a worker process: the caller gets the reader's AudioError itself, its
    one-line message naming the file, not the DataLoader's re-raise with the worker's traceback as message."""
    import sslsv.evaluation.embeddings as module

    _write(tmp_path / "good.wav", 4000)
    _write(tmp_path / "bad.wav", 4000, seed=1)
    original = module.read_audio

    def flaky(path, sample_rate):
        if str(path).endswith("bad.wav"):
            raise AudioError(f"{path}: truncated data")
        return original(path, sample_rate)

    monkeypatch.setattr(module, "read_audio", flaky)  # workers are forked after this
    with pytest.raises(AudioError) as info:
        extract_embeddings(ToyModel(), ["good.wav", "bad.wav"], SR, "cpu", root=tmp_path, progress=True,
                           num_workers=2)
    assert str(info.value) == f"{tmp_path / 'bad.wav'}: truncated data"


class Overflow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1e30))

    def forward(self, x):
        return ((x[:, :4].abs() + 1) * self.scale) ** 2


def test_non_finite_embeddings_name_the_files_and_the_weights(tmp_path):
    _write(tmp_path / "a.wav", 4000)
    _write(tmp_path / "b.wav", 4000, seed=1)
    model = torch.nn.Sequential(torch.nn.Unflatten(1, (1, -1)), torch.nn.AdaptiveAvgPool1d(8), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4))
    with torch.no_grad():
        model[3].bias[0] = float("inf")
    with pytest.raises(EvaluationError) as info:
        extract_embeddings(model, ["a.wav", "b.wav"], SR, "cpu", root=tmp_path, progress=False, num_workers=0)
    message = str(info.value)
    assert "non-finite (NaN/Inf) embeddings for 2 of 2" in message and "a.wav" in message
    assert "weight tensor(s) of the model are non-finite (e.g. 3.bias)" in message
    with pytest.raises(EvaluationError, match="weights are finite"):  # but the computation overflows float32
        extract_embeddings(Overflow(), ["a.wav"], SR, "cpu", root=tmp_path, progress=False, num_workers=0)
    with pytest.raises(EvaluationError, match="check the model and the audio"):  # a plain callable
        extract_embeddings(lambda x: x[:, :4] * float("nan"), ["a.wav"], SR, "cpu", root=tmp_path, progress=False,
                           num_workers=0)


def test_non_finite_waveform_is_refused():
    wave = np.zeros(400, dtype=np.float32)
    wave[3] = np.nan
    with pytest.raises(AudioError, match="item 0: the waveform has 1 NaN/Inf sample"):
        extract_embeddings(ToyModel(), [wave], SR, "cpu", progress=False, num_workers=0)


def test_evenly_spaced_crops_equal_model_on_read_crops(corpus):
    root, paths, waves, lengths = corpus
    model = ToyModel()
    emb = extract_embeddings(model, paths, SR, "cpu", batch_seconds=3 * 2 * 0.25, root=root, progress=False,
                             num_workers=0, crops=Crops(0.25, count=3))
    assert emb.shape == (len(paths), 3, 6) and not emb.is_inference()
    assert model.calls == [(6, 4000)] * 5  # 2 files of 3 crops per batch, in file order
    crops = [read_crops(root / p, SR, 0.25, 3) for p in paths]
    expected = torch.stack([_one_by_one(model, c) for c in crops])
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-6)
    assert extract_embeddings(model, [], SR, "cpu", progress=False, crops=Crops(0.25, count=3)).shape == (0, 3, 0)


def test_seeded_crops_depend_on_the_row_only(corpus):
    root, paths, waves, lengths = corpus
    model = ToyModel()
    crops = Crops(0.2, count=1, seed=7, first_row=100)
    whole = extract_embeddings(model, paths, SR, "cpu", root=root, progress=False, num_workers=0, crops=crops,
                               batch_size=4)
    assert max(b for b, _ in model.calls) == 4
    tail = extract_embeddings(model, paths[5:], SR, "cpu", root=root, progress=False, num_workers=0,
                              crops=Crops(0.2, count=1, seed=7, first_row=105))
    torch.testing.assert_close(tail, whole[5:])
    other = extract_embeddings(model, paths, SR, "cpu", root=root, progress=False, num_workers=0,
                               crops=Crops(0.2, count=1, seed=8, first_row=100))
    assert not torch.allclose(other, whole)


def test_waveforms_and_files_in_one_call(corpus):
    root, paths, waves, lengths = corpus
    model = ToyModel()
    items = [root / paths[0], torch.from_numpy(waves[1]), waves[2].astype(np.float64), str(root / paths[3])]
    emb = extract_embeddings(model, items, SR, "cpu", max_trim=0.0, progress=False, num_workers=0)
    assert sorted(model.calls) == [(1, 8000), (1, 12000), (2, 4000)]  # one batch per exact length
    torch.testing.assert_close(emb, _one_by_one(model, waves[:4]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="item 1: expected a path"):
        extract_embeddings(model, [paths[0], 3], SR, "cpu", root=root, progress=False)
    with pytest.raises(ValueError, match="item 0 is an empty waveform"):
        extract_embeddings(model, [np.zeros(0)], SR, "cpu", progress=False)
    with pytest.raises(ValueError, match="crops are read from files"):
        extract_embeddings(model, [waves[0]], SR, "cpu", progress=False, crops=Crops(0.1))
