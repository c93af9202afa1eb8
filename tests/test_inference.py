"""sslsv.load(run).embed / score on a run trained for one tiny epoch."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import sslsv
from sslsv.audio.io import AudioError
from sslsv.runs import RunError, load_model
from tests.bad_audio_cases import make_bad_inputs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"


@pytest.fixture(scope="module")
def run(tiny_run, tiny_data):
    return tiny_run, tiny_data


def test_embed_paths_arrays_tensors_agree(run):
    run_dir, data = run
    embedder = sslsv.load(run_dir)
    files = sorted((data / "tiny/wav").rglob("*.wav"))[:5]
    from_files = embedder.embed(files)
    assert from_files.shape == (5, embedder.embed_dim) and from_files.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(from_files, axis=1), 1, rtol=1e-5)
    waves = [sf.read(f, dtype="float32")[0] for f in files]
    np.testing.assert_allclose(embedder.embed(waves), from_files, atol=1e-5)
    mixed = embedder.embed([files[0], torch.from_numpy(waves[1]), waves[2]])
    np.testing.assert_allclose(mixed, from_files[:3], atol=1e-5)
    batch = np.stack([waves[0][:8000], waves[1][:8000]])
    np.testing.assert_allclose(embedder.embed(batch), embedder.embed([batch[0], batch[1]]), atol=1e-6)
    # reference: the model run one item at a time, which max_trim=0 reproduces (no item is cut to another's length)
    model, _, _ = load_model(run_dir)
    with torch.no_grad():
        single = torch.nn.functional.normalize(model(torch.from_numpy(waves[3])[None]), dim=1).numpy()
    np.testing.assert_allclose(sslsv.load(run_dir, max_trim=0).embed(files)[3:4], single, atol=1e-5)
    raw = embedder.embed(files[:2], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)


def test_score_is_cosine(run):
    run_dir, data = run
    embedder = sslsv.load(run_dir, use_average=False)
    a, b = sorted((data / "tiny/wav").rglob("*.wav"))[:2]
    e = embedder.embed([a, b])
    assert embedder.score(a, b) == pytest.approx(float(e[0] @ e[1]), abs=1e-6)
    assert embedder.score(a, a) == pytest.approx(1.0, abs=1e-5)


def test_errors(run, tmp_path):
    run_dir, _ = run
    embedder = sslsv.load(run_dir)
    with pytest.raises(ValueError, match="item 1: expected a path"):
        embedder.embed(["x.wav", 3])
    with pytest.raises(AudioError, match=r"\(S,\) or \(B, S\)"):
        embedder.embed(np.zeros((1, 2, 3)))
    with pytest.raises(AudioError, match="nothing.wav: no such file"):
        embedder.embed([tmp_path / "nothing.wav"])
    with pytest.raises(RunError, match="not a run directory"):
        sslsv.load(tmp_path)


def test_one_extraction_for_all_items(run, monkeypatch):
    import sslsv.inference as inference

    run_dir, data = run
    embedder = sslsv.load(run_dir)
    files = sorted((data / "tiny/wav").rglob("*.wav"))[:4]
    calls = []
    real = inference.extract_embeddings

    def counting(model, items, *args, **kwargs):
        calls.append(len(items))
        return real(model, items, *args, **kwargs)

    monkeypatch.setattr(inference, "extract_embeddings", counting)
    wave = sf.read(files[3], dtype="float32")[0]
    out = embedder.embed([*files[:3], wave])
    assert calls == [4] and out.shape == (4, embedder.embed_dim)


def test_bad_waveforms_are_refused_with_their_position(run):
    run_dir, _ = run
    embedder = sslsv.load(run_dir)
    good = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    with pytest.raises(AudioError, match=r"item 1: a waveform of 1 samples is too short \(at least 1600, 0.1 s"):
        embedder.embed([good, np.ones(1, np.float32)])
    with pytest.raises(AudioError, match="item 0: a waveform of 0 samples"):
        embedder.embed(np.zeros(0, np.float32))
    nan = good.copy()
    nan[::100] = np.nan
    with pytest.raises(AudioError, match="item 2: 80 of 8000 samples of the waveform are NaN or Inf"):
        embedder.embed([good, good, torch.from_numpy(nan)])
    with pytest.raises(AudioError, match=r"batch \(B, S\) of mono waveforms.*shape \(8000, 2\).*x.mean\(axis=1\)"):
        embedder.embed(np.stack([good, good], axis=1))  # a stereo (S, 2) recording
    with pytest.raises(AudioError, match=r"item 1: a waveform must be 1-D mono \(S,\), got shape \(8000, 2\)"):
        embedder.embed([good, np.stack([good, good], axis=1)])
    with pytest.raises(AudioError, match="item 1"):
        embedder.score(good, np.full(4000, np.inf, np.float32))
    assert embedder.embed(np.stack([good, good])).shape == (2, embedder.embed_dim)  # (B, S) stays a batch


def test_files_through_the_reader_every_bad_one_named(run, tmp_path):
    run_dir, _ = run
    embedder = sslsv.load(run_dir)
    cases = make_bad_inputs(tmp_path / "cases")
    loading = [path for path, ok in cases.values() if ok]
    out = embedder.embed(loading)
    assert out.shape == (len(loading), embedder.embed_dim) and np.isfinite(out).all()
    refused = [path for path, ok in cases.values() if not ok]
    with pytest.raises(AudioError) as info:
        embedder.embed(loading[:2] + refused)
    message = str(info.value)
    header_checked = [p for p in refused if "nan" not in p.name and "inf" not in p.name]
    assert message.startswith(f"{len(header_checked)} of {len(refused) + 2} audio files are unusable:")
    assert all(str(p) in message for p in header_checked)
    for name in ("nan_samples", "inf_samples"):  # found when decoded, named all the same
        with pytest.raises(AudioError, match=f"{name}.wav: 320 of 16000 decoded samples are NaN or Inf"):
            embedder.embed([loading[0], cases[name][0]])
    with pytest.raises(AudioError, match="one_sample.wav: too short"):
        embedder.score(loading[0], cases["one_sample"][0])


def test_embed_and_score_commands_name_bad_files_without_traceback(run, tmp_path, capsys):
    from sslsv.cli.run_tools import embed_main, score_main

    run_dir, _ = run
    cases = make_bad_inputs(tmp_path / "cases")
    good, folder, nan = (str(cases[name][0]) for name in ("pcm16", "directory", "nan_samples"))
    assert score_main([str(run_dir), good, folder, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {folder}: is a directory, not an audio file\n"
    assert embed_main([str(run_dir), good, nan, "-o", str(tmp_path / "e.npy"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"error: {nan}: 320 of 16000 decoded samples are NaN or Inf" in err and "Traceback" not in err
    assert not (tmp_path / "e.npy").exists()


def test_embed_equals_evaluate_pipeline_on_the_trial_files(run):
    """The API batches as evaluate.py does (the run's evaluation.batch_seconds and max_trim): the embeddings of a
    trial list's files, and so its scores, are evaluate.py's."""
    from sslsv.config import load_config
    from sslsv.evaluation.evaluate import Backends, check_trials, embed_utterances
    from sslsv.evaluation.scoring import cosine_scores, index_trials

    run_dir, _ = run
    config = load_config(run_dir / "config.yml")
    checked = check_trials(config.evaluation.trials[0], config)
    embedder = sslsv.load(run_dir)
    assert (embedder.max_trim, embedder.batch_seconds) == (config.evaluation.max_trim, config.evaluation.batch_seconds)
    model, _, _ = load_model(run_dir)
    reference = embed_utterances(model, checked.files, config, torch.device("cpu"), Backends(), progress=False)
    raw = embedder.embed(checked.files, normalize=False)
    np.testing.assert_allclose(raw, reference.numpy(), atol=1e-5)
    enroll, test = index_trials(checked.trials.enroll, checked.trials.test, checked.utterances)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    api = np.sum(unit[enroll] * unit[test], axis=1)
    np.testing.assert_allclose(api, cosine_scores(reference, enroll, test), atol=1e-5)


def test_embed_of_100_files_takes_few_encoder_calls(run, tmp_path):
    """100 files of 100 different lengths (1.0-1.2 s) are embedded in batches of nearly equal lengths, as the
    evaluation batches them: one encoder call per planned batch, far fewer than 100."""
    from sslsv.evaluation.embeddings import plan_batches

    run_dir, _ = run
    rng = np.random.default_rng(0)
    lengths = rng.permutation(np.linspace(16000, 19200, 100).astype(int))
    files = []
    for i, n in enumerate(lengths):
        files.append(tmp_path / f"{i:03d}.wav")
        sf.write(files[-1], (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
    embedder = sslsv.load(run_dir, batch_seconds=60)
    calls = []
    hook = embedder.model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        out = embedder.embed(files)
    finally:
        hook.remove()
    planned = plan_batches(lengths, 60 * 16000, embedder.max_trim)
    assert out.shape == (100, embedder.embed_dim) and sum(calls) == 100
    assert len(calls) == len(planned) <= 25, calls


def test_sample_rate_resamples_waveforms_as_the_reader_does(run, tmp_path):
    from scipy.signal import resample_poly

    run_dir, data = run
    embedder = sslsv.load(run_dir, max_trim=0)
    files = sorted((data / "tiny/wav").rglob("*.wav"))[:3]
    waves16 = [sf.read(f, dtype="float32")[0] for f in files]
    waves8 = [resample_poly(w, 1, 2).astype(np.float32) for w in waves16]
    files8 = []
    for i, w in enumerate(waves8):
        files8.append(tmp_path / f"{i}_8k.wav")
        sf.write(files8[-1], w, 8000, subtype="FLOAT")
    at_8k = embedder.embed(waves8, sample_rate=8000)
    # an 8 kHz file goes through the same resampler: same embedding as the 8 kHz array declared at 8 kHz
    np.testing.assert_allclose(at_8k, embedder.embed(files8), atol=1e-5)
    # and the content is the original's (tones below 4 kHz survive the round trip)
    assert (np.sum(at_8k * embedder.embed(waves16), axis=1) > 0.99).all()
    # undeclared, the 8 kHz samples are taken as 16 kHz ones (backwards compatible, documented): another signal
    assert not np.allclose(embedder.embed(waves8), at_8k, atol=1e-3)
    assert embedder.score(waves8[0], files[0], sample_rate=8000) > 0.99
    with pytest.raises(ValueError, match="sample_rate must be a positive"):
        embedder.embed(waves8[0], sample_rate=0)
    with pytest.raises(AudioError, match=r"too short \(at least 800, 0.1 s at 8000 Hz\)"):
        embedder.embed(np.zeros(700, np.float32), sample_rate=8000)


def test_normalize_default_and_raw(run):
    run_dir, data = run
    embedder = sslsv.load(run_dir)
    files = sorted((data / "tiny/wav").rglob("*.wav"))[:3]
    unit, raw = embedder.embed(files), embedder.embed(files, normalize=False)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_precision_and_layout_follow_the_run_or_the_arguments(run, monkeypatch):
    """load() takes amp / channels_last / compile from the run's evaluation section unless given, and embed() runs
    the model that way: bf16 NHWC embeddings are evaluate.py's bf16 NHWC ones, and the model is NCHW again after."""
    import dataclasses

    import sslsv.inference as inference
    from sslsv.config import load_config
    from sslsv.evaluation.evaluate import Backends, embed_utterances, with_extraction

    run_dir, data = run
    default = sslsv.load(run_dir)
    assert (default.amp, default.channels_last, default.compile) == ("none", False, False)
    fast = sslsv.load(run_dir, amp="bf16", channels_last=True)
    assert (fast.amp, fast.channels_last, fast.compile) == ("bf16", True, False)
    files = sorted((data / "tiny/wav").rglob("*.wav"))[:4]
    config = with_extraction(load_config(run_dir / "config.yml"), amp="bf16", channels_last=True)
    model, _, _ = load_model(run_dir)
    reference = embed_utterances(model, [str(f) for f in files], config, torch.device("cpu"), Backends(), False)
    np.testing.assert_allclose(fast.embed(files, normalize=False), reference.numpy(), atol=1e-6)
    assert not np.allclose(fast.embed(files), default.embed(files), atol=1e-6)  # bf16 is not float32
    assert all(p.dim() != 4 or p.is_contiguous() for p in fast.model.parameters())

    # the run's own evaluation settings are the defaults
    seen = {}
    real = inference.load_model

    def with_bf16_config(*args, **kwargs):
        model, config, source = real(*args, **kwargs)
        seen["done"] = True
        return model, dataclasses.replace(config, evaluation=dataclasses.replace(
            config.evaluation, amp="bf16", compile=True)), source

    monkeypatch.setattr(inference, "load_model", with_bf16_config)
    from_run = sslsv.load(run_dir)
    assert seen and (from_run.amp, from_run.compile) == ("bf16", True)
    assert sslsv.load(run_dir, amp="none", compile=False).amp == "none"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        sslsv.load(run_dir, amp="fp16")
