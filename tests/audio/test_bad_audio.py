"""Every audio read path loads what it should and refuses the rest with an AudioError naming the file."""
import os

import numpy as np
import pytest
import soundfile as sf

import sslsv.audio.io as io
from sslsv.audio.io import MIN_AUDIO_SECONDS, AudioError, audio_info, read_audio, read_crop
from tests.bad_audio_cases import REFUSED_KIND, SECONDS, make_bad_inputs

SR = 16000


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return make_bad_inputs(tmp_path_factory.mktemp("bad audio"))


def test_the_cases_cover_the_reliability_check(cases):
    loading = {name for name, (_, ok) in cases.items() if ok}
    assert loading == {"pcm16", "stereo", "rate_8k", "rate_44k", "pcm24", "float32", "flac", "space_unicode",
                       "silence"}
    assert set(cases) - loading == set(REFUSED_KIND) - ({"unreadable"} if os.geteuid() == 0 else set())


def test_files_that_should_load_give_finite_mono_audio_at_the_model_rate(cases):
    for name, (path, ok) in cases.items():
        if not ok:
            continue
        whole = read_audio(path, SR)
        assert whole.dtype == np.float32 and whole.ndim == 1 and np.isfinite(whole).all(), name
        assert abs(len(whole) - SECONDS * SR) <= 1, name
        crop = read_crop(path, 24000, SR, np.random.default_rng(0))  # longer than the file: repeated
        assert crop.shape == (24000,) and np.isfinite(crop).all(), name
        assert audio_info(path)[1] > 0


def test_refused_files_name_the_file_and_the_reason_on_every_read(cases):
    for name, (path, ok) in cases.items():
        if ok:
            continue
        for read in (lambda: read_audio(path, SR), lambda: read_crop(path, 4000, SR, np.random.default_rng(0))):
            with pytest.raises(AudioError) as info:
                read()
            assert str(info.value).startswith(f"{path}: "), name
            assert "\n" not in str(info.value), name
            assert info.value.kind == REFUSED_KIND[name], (name, str(info.value))
            assert info.value.path == str(path) and str(info.value) == f"{path}: {info.value.reason}"


def test_messages_say_what_is_wrong(cases):
    def message(name):
        with pytest.raises(AudioError) as info:
            read_audio(cases[name][0], SR)
        return str(info.value)

    assert message("directory").endswith("is a directory, not an audio file")
    assert message("missing").endswith("no such file")
    assert message("empty").endswith("empty file (0 bytes)")
    assert "NaN or Inf" in message("nan_samples") and "320 of 16000" in message("nan_samples")
    assert "at least 0.1 s" in message("one_sample") and "1 frames" in message("one_sample")
    assert "the header says 16000 frames, the file holds 7989" in message("data_shorter_than_header")
    assert "not a readable audio file" in message("text_as_wav")


def test_nan_is_caught_in_the_frames_a_crop_reads(tmp_path):
    x = (0.1 * np.random.default_rng(0).standard_normal(4 * SR)).astype(np.float32)
    x[-100:] = np.nan  # only the last frames
    path = tmp_path / "tail.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="tail.wav: 100 of"):
        read_audio(path, SR)
    with pytest.raises(AudioError, match="tail.wav"):
        read_crop(path, 4 * SR, SR, np.random.default_rng(0))  # the whole file
    # resampled crops are checked before resampling spreads the NaN
    with pytest.raises(AudioError, match="tail.wav"):
        read_crop(path, 4 * 8000, 8000, np.random.default_rng(0))


def test_truncated_flac_is_refused_when_decoded(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(2 * SR)).astype(np.float32), SR)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    assert audio_info(path)[1] == 2 * SR  # FLAC keeps the original length in its header
    with pytest.raises(AudioError, match="cut.flac") as info:
        read_audio(path, SR)
    assert info.value.kind in ("truncated", "unreadable")


def test_minimum_length_is_a_parameter(cases):
    path = cases["short_0.05s"][0]
    assert len(read_audio(path, SR, min_seconds=0.01)) == 800
    assert read_crop(path, 1600, SR, np.random.default_rng(0), min_seconds=0.0).shape == (1600,)
    info = audio_info(path, min_seconds=0)
    with pytest.raises(AudioError, match="too short"):  # a header from elsewhere is checked all the same
        read_crop(path, 1600, SR, np.random.default_rng(0), info=info)
    assert MIN_AUDIO_SECONDS == 0.1


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "locked.wav"
    sf.write(path, np.zeros(SR, dtype=np.float32), SR)
    if os.geteuid() == 0:  # root reads any file: simulate what an ordinary user gets
        real_access, real_info = os.access, io.sf.info

        def denied(name, *args, **kwargs):
            if str(name) == str(path):
                raise sf.LibsndfileError(2, f"Error opening {str(path)!r}: ")
            return real_info(name, *args, **kwargs)

        monkeypatch.setattr(io.os, "access", lambda name, mode: False if str(name) == str(path) else
                            real_access(name, mode))
        monkeypatch.setattr(io.sf, "info", denied)
    else:
        path.chmod(0)
    with pytest.raises(AudioError, match="locked.wav: permission denied") as info:
        audio_info(path)
    assert info.value.kind == "permission denied"


def test_a_worker_reraised_error_keeps_its_one_line_message():
    # what torch's DataLoader does with an exception raised in a worker process
    from torch._utils import ExceptionWrapper

    try:
        raise io._error("/data/a.wav", "non-finite", "3 of 16000 decoded samples are NaN or Inf")
    except AudioError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(AudioError) as info:
        wrapper.reraise()
    assert str(info.value) == "/data/a.wav: 3 of 16000 decoded samples are NaN or Inf"
