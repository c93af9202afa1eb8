"""Compressed formats (mp3, m4a, aac) outside `prepare`: decoded whole through soundfile, PyAV or ffmpeg, then
sliced; a clear message naming the file and what to install when nothing can decode it."""
import numpy as np
import pytest
import soundfile as sf

from sslsv.audio import io
from sslsv.audio.io import AudioError, audio_info, check_audio_files, read_audio, read_crop

SR = 16000


@pytest.fixture(autouse=True)
def fresh_cache():
    io._decode_cached.cache_clear()
    yield
    io._decode_cached.cache_clear()


def _sine(seconds, freq=440.0, sr=SR, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def _peak_frequency(x, sr):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * sr / len(x)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile cannot write MP3")
def test_mp3_reads_whole_crops_and_resamples(tmp_path):
    path = tmp_path / "a.mp3"
    sf.write(path, _sine(1.0), SR, format="MP3")
    rate, frames, channels = audio_info(path)
    assert (rate, channels) == (SR, 1) and abs(frames - SR) < 2000
    audio = read_audio(path, SR)
    assert len(audio) == frames and audio.dtype == np.float32
    assert _peak_frequency(audio, SR) == pytest.approx(440, abs=5)
    assert len(read_audio(path, 8000)) == pytest.approx(frames / 2, abs=2)
    # crops are exact slices of the decoded file (MP3 seeking is not sample-accurate, so nothing seeks)
    crop = read_crop(path, 4000, SR, np.random.default_rng(0), info=(rate, frames, channels))
    start = next(i for i in range(frames - 4000 + 1) if np.array_equal(audio[i:i + 4000], crop))
    assert start >= 0
    crop[:] = 0  # callers may write into what they get: the cached decode stays intact
    np.testing.assert_array_equal(read_audio(path, SR), audio)


def _fake_decoder(calls):
    def decode(path):
        calls.append(path)
        return _sine(0.5, 300.0, 22050, channels=2), 22050
    return decode


def test_m4a_through_a_decoder_channels_averaged_and_decoded_once(tmp_path, monkeypatch):
    path = tmp_path / "a.m4a"
    path.write_bytes(b"not really aac, the decoder is faked")
    calls = []
    monkeypatch.setattr(io, "_pyav_available", lambda: True)
    monkeypatch.setitem(io._DECODERS, "pyav", _fake_decoder(calls))
    assert audio_info(path) == (22050, 11025, 2)
    audio = read_audio(path, SR)
    expected = _sine(0.5, 300.0, 22050, channels=2).mean(axis=1)
    assert len(audio) == round(11025 * SR / 22050)
    assert _peak_frequency(audio, SR) == pytest.approx(300, abs=5)
    np.testing.assert_allclose(read_audio(path, 22050), expected, atol=1e-7)
    assert len(calls) == 1  # header check and reads share one decode
    check_audio_files([path])
    path.write_bytes(b"changed file, new size")  # a changed file is decoded again
    read_audio(path, SR)
    assert len(calls) == 2


def test_ffmpeg_executable_when_pyav_is_missing(tmp_path, monkeypatch):
    path = tmp_path / "a.aac"
    path.write_bytes(b"x" * 10)
    calls = []
    monkeypatch.setattr(io, "_pyav_available", lambda: False)
    monkeypatch.setattr(io.shutil, "which", lambda name: "/usr/bin/ffmpeg" if name == "ffmpeg" else None)
    monkeypatch.setitem(io._DECODERS, "ffmpeg", _fake_decoder(calls))
    assert io._decoder(str(path)) == "ffmpeg"
    assert audio_info(path)[0] == 22050 and calls == [str(path)]


def test_missing_decoder_names_the_file_and_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "speech.m4a"
    path.write_bytes(b"x" * 100)
    monkeypatch.setattr(io, "_pyav_available", lambda: False)
    monkeypatch.setattr(io.shutil, "which", lambda name: None)
    with pytest.raises(AudioError) as error:
        read_audio(path, SR)
    message = str(error.value)
    assert message.startswith(f"{path}: reading .m4a files needs a decoder")
    assert "pip install av" in message and "ffmpeg" in message and error.value.kind == "no decoder"
    # an MP3 without libsndfile MP3 support says that a newer soundfile also helps
    monkeypatch.setattr(io, "_libsndfile_reads_mp3", lambda: False)
    mp3 = tmp_path / "a.mp3"
    mp3.write_bytes(b"x" * 100)
    with pytest.raises(AudioError, match=r"soundfile >= 0.12"):
        audio_info(mp3)
    # a missing file is reported as missing, not as a missing decoder
    with pytest.raises(AudioError, match="no such file") as missing:
        audio_info(tmp_path / "gone.m4a")
    assert missing.value.kind == "missing"


def test_undecodable_file_is_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "broken.m4a"
    path.write_bytes(b"x" * 100)

    def broken(path):
        raise RuntimeError("Invalid data found when processing input")

    monkeypatch.setattr(io, "_pyav_available", lambda: True)
    monkeypatch.setitem(io._DECODERS, "pyav", broken)
    with pytest.raises(AudioError, match=r"broken.m4a: not a readable audio file \(Invalid data") as error:
        audio_info(path)
    assert error.value.kind == "unreadable"


def test_real_pyav_decode_when_installed(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "a.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=SR)
        stream.layout = "mono"
        samples = _sine(1.0)[None, :]
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), format="fltp",
                                               layout="mono")
            frame.sample_rate = SR
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audio = read_audio(path, SR)
    assert abs(len(audio) - SR) <= 1024 and _peak_frequency(audio, SR) == pytest.approx(440, abs=5)
