"""The front-end of each encoder family: Fast ResNet-34 (and its multi-scale variant) and ECAPA-TDNN get the review
authors' log-mels (theolepage/sslsv encoders/_BaseEncoder.py; the `features` defaults), ReDimNet its own
(IDRnD/ReDimNet MelBanks: pre-emphasis 0.97, 20-7600 Hz), through configs/encoders/*.yml. Every shipped train
config resolves to its family's front-end."""
import pytest
import torch
import torchaudio

from sslsv.audio.features import LogMel
from sslsv.config import FeaturesConfig, load_config
from tests.resolved_configs import ROOT, train_config_paths

# family -> (f_min, f_max, preemphasis, n_fft, win_ms, hop_ms, instance_norm)
AUTHORS = (0.0, None, 0.0, 512, 25.0, 10.0, True)
REDIMNET = (20.0, 7600.0, 0.97, 512, 25.0, 10.0, True)
FAMILY = {"fast_resnet34": AUTHORS, "fast_resnet34_ms": AUTHORS, "ecapa_tdnn": AUTHORS,
          "redimnet_b0": REDIMNET, "redimnet_b2": REDIMNET}
WAVEFORM_ENCODERS = {"ssrfnet", "sv_mixer", "pretrained_speech"}  # raw audio in: the `features` section feeds no front-end


def _front_end(features: FeaturesConfig) -> tuple:
    return (features.f_min, features.f_max, features.preemphasis, features.n_fft, features.win_ms,
            features.hop_ms, features.instance_norm)


@pytest.mark.parametrize("path", train_config_paths())
def test_every_shipped_config_resolves_to_its_family_front_end(path):
    config = load_config(ROOT / path)
    name = config.encoder.name
    if name in WAVEFORM_ENCODERS:
        return
    assert name in FAMILY, f"{path}: encoder {name} has no front-end family in this test (docs/config.md table)"
    assert _front_end(config.features) == FAMILY[name], path


def test_the_defaults_compute_the_authors_front_end():
    """theolepage/sslsv BaseEncoder: MelSpectrogram(n_fft=512, win_length=400, hop_length=160, hamming window,
    torchaudio's 0 Hz to Nyquist band), + 1e-6, log, InstanceNorm1d (no affine)."""
    assert _front_end(FeaturesConfig()) == AUTHORS
    for n_mels in (40, 80):
        melspec = torchaudio.transforms.MelSpectrogram(n_fft=512, win_length=400, hop_length=160,
                                                       window_fn=torch.hamming_window, n_mels=n_mels,
                                                       sample_rate=16000)
        x = 0.1 * torch.randn(3, 16000, generator=torch.Generator().manual_seed(n_mels))
        authors = torch.nn.InstanceNorm1d(n_mels)((melspec(x) + 1e-6).log())
        torch.testing.assert_close(LogMel(FeaturesConfig(n_mels=n_mels))(x), authors, atol=2e-4, rtol=0)


def test_redimnet_front_end_is_pre_emphasised_and_band_limited():
    config = load_config(ROOT / "configs/simclr/redimnet_b0.yml")
    frontend = LogMel(config.features)
    assert frontend.preemphasis == 0.97
    fb = frontend.melspec.mel_scale.fb  # (n_freqs, n_mels): nothing below 20 Hz or above 7600 Hz
    freqs = torch.linspace(0, 8000, fb.shape[0])
    assert fb[(freqs < 20) | (freqs > 7600)].abs().max() == 0
    authors = LogMel(load_config(ROOT / "configs/simclr/fast_resnet34.yml").features).melspec.mel_scale.fb
    assert authors[freqs > 7600].abs().max() > 0  # the authors' band reaches the Nyquist frequency
