import math

import pytest
import torch
import torchaudio

from sslsv.audio.features import LogMel
from sslsv.config import ConfigError, FeaturesConfig

SR = 16000


def _tone(freq, seconds=1.0, batch=1):
    t = torch.arange(int(seconds * SR)) / SR
    return (0.5 * torch.sin(2 * math.pi * freq * t)).repeat(batch, 1)


def test_shape_and_frame_count():
    frontend = LogMel(FeaturesConfig())
    x = 0.1 * torch.randn(3, 2 * SR)
    y = frontend(x)
    assert y.shape == (3, 40, 201) and y.dtype == torch.float32
    assert frontend.num_frames(2 * SR) == 201
    assert LogMel(FeaturesConfig(n_mels=80))(torch.randn(2, 12345)).shape == (2, 80, 12345 // 160 + 1)


def test_instance_norm_gives_zero_mean_unit_std_per_band():
    y = LogMel(FeaturesConfig())(0.1 * torch.randn(2, SR) + _tone(300, batch=2))
    torch.testing.assert_close(y.mean(dim=-1), torch.zeros(2, 40), atol=1e-4, rtol=0)
    # eps = 1e-5 in the variance: std is sqrt(v / (v + eps)), slightly below 1 for bands with little variation
    torch.testing.assert_close(y.std(dim=-1, unbiased=False), torch.ones(2, 40), atol=5e-3, rtol=0)


def test_matches_reference_pipeline_without_norm():
    cfg = FeaturesConfig(instance_norm=False, preemphasis=0.97, f_min=20.0, f_max=7600.0)  # ReDimNet's
    x = 0.1 * torch.randn(2, 8000)
    emphasised = torch.cat([x[:, :1], x[:, 1:] - 0.97 * x[:, :-1]], dim=1)
    reference = torchaudio.transforms.MelSpectrogram(SR, n_fft=512, win_length=400, hop_length=160, f_min=20,
                                                     f_max=7600, window_fn=torch.hamming_window, n_mels=40)
    torch.testing.assert_close(LogMel(cfg)(x), torch.log(reference(emphasised) + 1e-6))


@pytest.mark.parametrize("freq", [250.0, 1000.0, 4000.0])
def test_pure_tone_peaks_in_the_expected_band(freq):
    cfg = FeaturesConfig(instance_norm=False, preemphasis=0.0)
    frontend = LogMel(cfg)
    y = frontend(_tone(freq))
    band = int(y[0, :, 10:-10].mean(dim=-1).argmax())
    # Expected band: the triangular filter whose centre is closest to the tone on the mel scale.
    fb = frontend.melspec.mel_scale.fb  # (n_freqs, n_mels)
    bin_index = int(round(freq * cfg.n_fft / SR))
    expected = int(fb[bin_index].argmax())
    assert band == expected


def test_autocast_bfloat16_returns_float32_and_same_values():
    frontend = LogMel(FeaturesConfig())
    x = 0.1 * torch.randn(2, SR)
    reference = frontend(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = frontend(x.to(torch.bfloat16))
        z = frontend(x)
    assert y.dtype == torch.float32 and z.dtype == torch.float32
    torch.testing.assert_close(z, reference)


def test_works_with_requires_grad():
    x = (0.1 * torch.randn(1, 4000)).requires_grad_()
    y = LogMel(FeaturesConfig(instance_norm=False))(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_config_is_reported():
    with pytest.raises(ConfigError, match="features.n_fft"):
        LogMel(FeaturesConfig(sample_rate=48000, n_fft=512))
    with pytest.raises(ConfigError, match="features.f_max"):
        LogMel(FeaturesConfig(sample_rate=8000, f_max=7600))
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        LogMel(FeaturesConfig())(torch.randn(4000))
