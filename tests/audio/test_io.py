import numpy as np
import pytest
import soundfile as sf

from sslsv.audio.io import AudioError, audio_info, read_audio, read_crop

SR = 16000


def _write(path, data, sr=SR, subtype="FLOAT"):
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def _sine(freq, seconds, sr):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_frequency(x, sr):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * sr / len(x)


def test_audio_info_and_read_audio(tmp_path):
    data = np.random.default_rng(0).standard_normal(12345).astype(np.float32) * 0.1
    path = _write(tmp_path / "a.wav", data)
    assert audio_info(path) == (SR, 12345, 1)
    np.testing.assert_array_equal(read_audio(path, SR), data)
    assert read_audio(path, SR).dtype == np.float32


def test_partial_read_equals_slice_of_full_read(tmp_path):
    data = np.random.default_rng(1).standard_normal(SR * 3).astype(np.float32) * 0.1
    path = _write(tmp_path / "a.flac", data, subtype="PCM_24")
    full = read_audio(path, SR)
    starts = set()
    for seed in range(20):
        crop = read_crop(path, 8000, SR, np.random.default_rng(seed))
        assert crop.shape == (8000,) and crop.dtype == np.float32
        start = int(np.random.default_rng(seed).integers(len(full) - 8000 + 1))
        np.testing.assert_array_equal(crop, full[start : start + 8000])
        starts.add(start)
    assert len(starts) > 15  # random starts


def test_crop_is_deterministic_given_rng(tmp_path):
    path = _write(tmp_path / "a.wav", np.random.default_rng(2).standard_normal(SR * 2).astype(np.float32))
    a = read_crop(path, 4000, SR, np.random.default_rng(7))
    b = read_crop(path, 4000, SR, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    info = audio_info(path)
    np.testing.assert_array_equal(a, read_crop(path, 4000, SR, np.random.default_rng(7), info=info))


@pytest.mark.parametrize("file_rate", [8000, 44100, 48000])
def test_resampling_keeps_length_and_frequency(tmp_path, file_rate):
    path = _write(tmp_path / f"sine{file_rate}.wav", _sine(440.0, 2.0, file_rate), sr=file_rate)
    full = read_audio(path, SR)
    assert abs(len(full) - 2 * SR) <= 1
    assert abs(_peak_frequency(full, SR) - 440.0) < 2.0
    for seed in range(5):
        crop = read_crop(path, SR, SR, np.random.default_rng(seed))
        assert crop.shape == (SR,)
        assert abs(_peak_frequency(crop, SR) - 440.0) < 2.0
        assert 0.3 < np.abs(crop).max() < 0.6  # no filter edge effects / attenuation
        # The crop is the sine sampled at SR from the drawn file frame on: right start, no edge effects.
        needed = -(-SR * file_rate // SR)
        start = int(np.random.default_rng(seed).integers(2 * file_rate - needed + 1))
        expected = 0.5 * np.sin(2 * np.pi * 440.0 * (start / file_rate + np.arange(SR) / SR))
        np.testing.assert_allclose(crop, expected, atol=5e-3)


def test_stereo_is_averaged(tmp_path):
    rng = np.random.default_rng(3)
    left, right = rng.standard_normal(SR).astype(np.float32) * 0.1, rng.standard_normal(SR).astype(np.float32) * 0.1
    path = _write(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    np.testing.assert_allclose(read_audio(path, SR), (left + right) / 2, atol=1e-7)
    crop = read_crop(path, 4000, SR, np.random.default_rng(0))
    start = int(np.random.default_rng(0).integers(SR - 4000 + 1))
    np.testing.assert_allclose(crop, ((left + right) / 2)[start : start + 4000], atol=1e-7)


def test_short_file_wraps_around(tmp_path):
    data = np.arange(1, 2001, dtype=np.float32) / 4000
    path = _write(tmp_path / "short.wav", data)
    crop = read_crop(path, 5000, SR, np.random.default_rng(0))
    assert crop.shape == (5000,)
    assert np.all(crop != 0)  # never zero-padded
    offset = int(np.searchsorted(data, crop[0]))
    np.testing.assert_array_equal(crop, data[(offset + np.arange(5000)) % 2000])
    # Resampled short file also wraps to the exact length.
    path8 = _write(tmp_path / "short8k.wav", _sine(300, 0.1, 8000), sr=8000)
    assert read_crop(path8, SR, SR, np.random.default_rng(0)).shape == (SR,)


def test_exact_length_file(tmp_path):
    data = np.random.default_rng(4).standard_normal(4000).astype(np.float32) * 0.1
    path = _write(tmp_path / "exact.wav", data)
    np.testing.assert_array_equal(read_crop(path, 4000, SR, np.random.default_rng(0)), data)


def test_bad_files_raise_audio_error_naming_them(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    with pytest.raises(AudioError, match="notes.wav"):
        read_crop(text, 100, SR, np.random.default_rng(0))
    with pytest.raises(AudioError, match="notes.wav"):
        read_audio(text, SR)
    with pytest.raises(AudioError, match="missing.wav"):
        read_crop(tmp_path / "missing.wav", 100, SR, np.random.default_rng(0))
    empty = _write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="empty.wav"):
        read_crop(empty, 100, SR, np.random.default_rng(0))
