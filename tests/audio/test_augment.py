from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import fftconvolve

from sslsv.audio.augment import (
    AugmentationError,
    AugmentationSources,
    apply_augmentation,
    fft_convolve,
    stack_plans,
)
from sslsv.config import AugmentationConfig

SR = 16000


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("augdata")
    rng = np.random.default_rng(0)
    for category in ("noise", "music", "speech"):
        folder = root / "musan" / category / "sub"
        folder.mkdir(parents=True)
        for k in range(8):
            noise = 0.05 * (k + 1) * rng.standard_normal(SR * 2)
            sf.write(folder / f"{category}{k}.wav", noise.astype(np.float32), SR)
    (root / "rirs" / "room").mkdir(parents=True)
    for k in range(3):
        rir = np.zeros(SR // 2, dtype=np.float32)
        rir[100 + k] = 0.8  # direct path after a delay: must be moved to index 0
        rir[101 + k :] = 0.1 * np.exp(-np.arange(SR // 2 - 101 - k) / 800) * rng.standard_normal(SR // 2 - 101 - k)
        sf.write(root / "rirs" / "room" / f"rir{k}.flac", rir, SR)
    return root


def _config(**kw):
    return AugmentationConfig(musan_dir="musan", rir_dir="rirs", **kw)


def _speech(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, length, generator=g)


def _snr(signal, noise):
    power = lambda a: np.mean(np.asarray(a, dtype=np.float64) ** 2)  # noqa: E731
    return 10 * np.log10(power(signal) / power(noise))


def test_fft_convolution_matches_scipy():
    rng = np.random.default_rng(0)
    x, h = rng.standard_normal((3, 1000)), rng.standard_normal((3, 300))
    y = fft_convolve(torch.from_numpy(x), torch.from_numpy(h)).numpy()
    for b in range(3):
        np.testing.assert_allclose(y[b], fftconvolve(x[b], h[b])[:1000], atol=1e-9)
        np.testing.assert_allclose(y[b], np.convolve(x[b], h[b])[:1000], atol=1e-9)
    # float32 path, RIR longer than the signal
    x32, h32 = rng.standard_normal((2, 500)).astype(np.float32), rng.standard_normal((2, 800)).astype(np.float32)
    y32 = fft_convolve(torch.from_numpy(x32), torch.from_numpy(h32)).numpy()
    np.testing.assert_allclose(y32[1], np.convolve(x32[1], h32[1])[:500], atol=1e-3)


def test_rir_is_peak_aligned_unit_energy(root):
    sources = AugmentationSources(_config(strategy="reverb"), root, SR)
    rir, path = sources.draw_rir(np.random.default_rng(0))
    assert rir.shape == (SR,) and rir.dtype == np.float32  # rir_max_seconds = 1 s, zero-padded
    assert np.argmax(np.abs(rir)) == 0
    assert np.sum(rir.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-5)
    assert path.endswith(".flac")


def test_reverberation_applies_rir_only_on_selected_rows(root):
    sources = AugmentationSources(_config(strategy="reverb"), root, SR)
    plans = [sources.draw(np.random.default_rng(i), 8000) for i in range(4)]
    batch = stack_plans(plans)
    batch["use_rir"] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    x = _speech(4, 8000)
    y = apply_augmentation(x, **batch)
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y[1], x[1], rtol=0, atol=0)
    torch.testing.assert_close(y[3], x[3], rtol=0, atol=0)
    expected = np.convolve(x[0].double().numpy(), plans[0]["rir"].astype(np.float64))[:8000]
    np.testing.assert_allclose(y[0].numpy(), expected, atol=1e-4)
    # Peak-aligned RIR: the output is not delayed (direct path at lag 0 dominates the cross-correlation).
    corr = np.correlate(y[2].numpy(), x[2].numpy(), mode="full")
    assert np.argmax(corr) == len(x[2]) - 1


def test_single_noise_snr_is_exact(root):
    cfg = _config(strategy="noise")
    sources = AugmentationSources(cfg, root, SR)
    checked = Counter()
    for seed in range(40):
        details = {}
        plan = sources.draw(np.random.default_rng(seed), 8000, details)
        if details["components"][0]["category"] == "speech":
            continue  # babble: tested below
        (component,) = details["components"]
        checked[component["category"]] += 1
        low, high = cfg.snr_noise if component["category"] == "noise" else cfg.snr_music
        assert low <= component["snr"] <= high
        x = _speech(1, 8000, seed)
        batch = stack_plans([plan])
        y = apply_augmentation(x, **batch)
        added = (y - x)[0].numpy()
        assert abs(_snr(x[0].numpy(), added) - component["snr"]) < 0.1
    assert checked["noise"] > 3 and checked["music"] > 3


def test_babble_components_and_composite_power(root):
    cfg = _config(strategy="noise")
    sources = AugmentationSources(cfg, root, SR)
    seen = 0
    for seed in range(60):
        details = {}
        plan = sources.draw(np.random.default_rng(seed), 16000, details)
        components = details["components"]
        if components[0]["category"] != "speech":
            continue
        seen += 1
        assert cfg.babble_speakers[0] <= len(components) <= cfg.babble_speakers[1]
        assert len({c["path"] for c in components}) == len(components)  # different speakers
        snrs = np.array([c["snr"] for c in components])
        assert np.all((snrs >= cfg.snr_speech[0]) & (snrs <= cfg.snr_speech[1]))
        for c in components:
            assert np.mean(c["crop"] ** 2) == pytest.approx(1.0, rel=1e-6)
        # The plan's noise is exactly sum_k n_k 10^(-snr_k/20) ...
        composite = sum(c["crop"] * 10 ** (-c["snr"] / 20) for c in components)
        np.testing.assert_allclose(plan["noise"], composite, atol=1e-6)
        x = _speech(1, 16000, seed)
        power = float(np.mean(x[0].double().numpy() ** 2))
        y = apply_augmentation(x, **stack_plans([plan]))
        added = (y - x)[0].double().numpy()
        # ... so on the device every component gets exactly its SNR relative to the speech,
        for c in components:
            part = np.sqrt(power) * 10 ** (-c["snr"] / 20) * c["crop"]
            assert abs(_snr(x[0].numpy(), part) - c["snr"]) < 0.1
        # and the composite power is the sum of the component powers (independent noises; cross terms ~ 1/sqrt(S)).
        expected_snr = -10 * np.log10(np.sum(10 ** (-snrs / 10)))
        assert abs(_snr(x[0].numpy(), added) - expected_snr) < 0.3
    assert seen >= 5


def test_reverb_then_noise_uses_reverberated_power(root):
    sources = AugmentationSources(_config(strategy="reverb+noise"), root, SR)
    checked = 0
    for seed in range(10):
        details = {}
        plan = sources.draw(np.random.default_rng(seed), 8000, details)
        assert plan["use_rir"] == 1 and plan["use_noise"] == 1
        if len(details["components"]) != 1:
            continue
        x = _speech(1, 8000)
        batch = stack_plans([plan])
        reverberated = apply_augmentation(x, batch["rir"], batch["use_rir"], torch.zeros_like(x), torch.zeros(1))
        y = apply_augmentation(x, **batch)
        snr = _snr(reverberated[0].numpy(), (y - reverberated)[0].numpy())
        assert abs(snr - details["components"][0]["snr"]) < 0.1
        checked += 1
    assert checked >= 2


def test_strategy_none_and_probability_zero_leave_audio_identical(root):
    x = _speech(4, 4000)
    for cfg in (AugmentationConfig(strategy="none", musan_dir=None, rir_dir=None), _config(probability=0.0)):
        sources = AugmentationSources(cfg, root, SR)
        plans = [sources.draw(np.random.default_rng(i), 4000) for i in range(4)]
        batch = stack_plans(plans)
        assert batch["use_rir"].sum() == 0 and batch["use_noise"].sum() == 0
        assert torch.equal(apply_augmentation(x, **batch), x)


def test_all_draws_the_four_choices_uniformly(root):
    sources = AugmentationSources(_config(strategy="all"), root, SR)
    counts = Counter(sources.choose(np.random.default_rng(i)) for i in range(4000))
    assert set(counts) == {"none", "reverb", "noise", "reverb+noise"}
    for n in counts.values():
        assert abs(n - 1000) < 120
    half = AugmentationSources(_config(strategy="noise", probability=0.5), root, SR)
    counts = Counter(half.choose(np.random.default_rng(i)) for i in range(4000))
    assert abs(counts["noise"] - 2000) < 150


def test_draws_are_deterministic(root):
    sources = AugmentationSources(_config(strategy="all"), root, SR)
    for seed in range(5):
        a, b = sources.draw(np.random.default_rng(seed), 3000), sources.draw(np.random.default_rng(seed), 3000)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_missing_or_empty_folders_name_the_key(root, tmp_path):
    with pytest.raises(AugmentationError, match="augmentation.rir_dir"):
        AugmentationSources(AugmentationConfig(strategy="reverb", rir_dir="nowhere"), root, SR)
    (tmp_path / "empty_rirs").mkdir()
    with pytest.raises(AugmentationError, match=r"augmentation.rir_dir: no audio files .*empty_rirs"):
        AugmentationSources(AugmentationConfig(strategy="reverb", rir_dir="empty_rirs"), tmp_path, SR)
    with pytest.raises(AugmentationError, match="augmentation.musan_dir"):
        AugmentationSources(AugmentationConfig(strategy="noise", musan_dir="nomusan"), root, SR)
    with pytest.raises(AugmentationError, match="augmentation.musan_dir is null"):
        AugmentationSources(AugmentationConfig(strategy="noise", musan_dir=None), root, SR)
    # Folders a strategy does not need may be absent.
    AugmentationSources(AugmentationConfig(strategy="reverb", rir_dir="rirs", musan_dir=None), root, SR)
    AugmentationSources(AugmentationConfig(strategy="noise", musan_dir="musan", rir_dir=None), root, SR)


def test_apply_augmentation_under_autocast_stays_float32(root):
    sources = AugmentationSources(_config(strategy="reverb+noise"), root, SR)
    batch = stack_plans([sources.draw(np.random.default_rng(i), 4000) for i in range(2)])
    x = _speech(2, 4000)
    expected = apply_augmentation(x, **batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = apply_augmentation(x, **batch)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="noise"):
        apply_augmentation(x, batch["rir"], batch["use_rir"], batch["noise"][:, :10], batch["use_noise"])


def test_collate_in_dataset_matches_stack_plans(root):
    sources = AugmentationSources(_config(strategy="all"), root, SR)
    plans = [sources.draw(np.random.default_rng(i), 2000) for i in range(3)]
    batch = stack_plans(plans)
    assert batch["rir"].shape == (3, SR) and batch["noise"].shape == (3, 2000)
    assert batch["use_rir"].shape == (3,) and batch["use_noise"].dtype == torch.float32
