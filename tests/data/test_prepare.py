"""Corpus preparation on tiny fixtures in the official VoxCeleb / MUSAN / RIRS_NOISES layouts (no ffmpeg needed)."""
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sslsv.cli.data import prepare_main as main
from sslsv.data.manifest import check_manifest, read_manifest
from sslsv.data.prepare import (PrepareError, convert_all, extract_zip, md5sum, prepare_musan, prepare_rirs,
                                prepare_voxceleb)
from sslsv.data.trials import read_trials, resolve_trials

SR = 16000


def _wav(path: Path, seconds: float = 0.3, rate: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.random.default_rng(len(str(path))).standard_normal(int(seconds * rate))).astype(np.float32), rate)


def _vox1_tree(folder: Path, speakers, videos=2, utts=2) -> list[str]:
    names = []
    for s in speakers:
        for v in range(videos):
            for u in range(utts):
                rel = f"{s}/vid{v}/{u + 1:05d}.wav"
                _wav(folder / "wav" / rel)
                names.append(rel)
    return names


def _zip(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())


def fake_converter(src: Path, dst: Path, rate: int) -> None:
    """Stands in for ffmpeg: the fake .m4a files hold raw float32 samples."""
    sf.write(dst, np.frombuffer(src.read_bytes(), dtype=np.float32), rate)


@pytest.fixture()
def downloads(tmp_path):
    src = tmp_path / "downloads"
    staging = tmp_path / "staging"
    dev = _vox1_tree(staging / "dev", ["id10001", "id10002", "id10270"])  # id10270 is also in the O trials
    test = _vox1_tree(staging / "test", ["id10300", "id10301"])
    src.mkdir()
    _zip(staging / "dev", src / "vox1_dev_wav.zip")
    # vox1 test as split parts, as distributed
    _zip(staging / "test", staging / "test.zip")
    data = (staging / "test.zip").read_bytes()
    (src / "vox1_test_wav_partaa").write_bytes(data[: len(data) // 2])
    (src / "vox1_test_wav_partab").write_bytes(data[len(data) // 2:])
    # vox2 as folder dev/aac with fake m4a
    for s in ("id00012", "id00015"):
        for v in range(2):
            path = src / "dev" / "aac" / s / f"v{v}" / "00001.m4a"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes((0.1 * np.ones(SR // 4, np.float32)).tobytes())
    trials = tmp_path / "lists"
    trials.mkdir()
    lines = [f"1 {test[0]} {test[1]}", f"0 {test[0]} {test[-1]}", f"0 id10270/vid0/00001.wav {test[2]}"]
    (trials / "veri_test2.txt").write_text("\n".join(lines) + "\n")
    (trials / "list_test_hard2.txt").write_text(f"1 {dev[0]} {dev[1]}\n0 {dev[0]} {test[0]}\n")
    return src, trials


def test_prepare_voxceleb_end_to_end(downloads, tmp_path):
    src, trials = downloads
    root = tmp_path / "data"
    result = prepare_voxceleb(src, root, trials, workers=2, converter=fake_converter, progress=False)
    vox1 = read_manifest(root / "voxceleb1/train.csv")
    assert set(vox1.speakers) == {"id10001", "id10002"}  # id10270 removed: it appears in veri_test2
    assert vox1.files[0].startswith("voxceleb1/wav/id10001/")
    assert check_manifest(vox1, root, SR, 0.1) == pytest.approx([0.3] * len(vox1))
    vox2 = read_manifest(root / "voxceleb2/train.csv")
    assert len(vox2) == 4 and set(vox2.sessions) == {"v0", "v1"} and vox2.durations[0] == pytest.approx(0.25)
    check_manifest(vox2, root, SR, 0.1, allow_resample=False)
    trials_o, audio = resolve_trials("vox1_O", root)
    assert len(trials_o) == 3 and audio == root / "voxceleb1/wav"
    assert len(read_trials(root / "voxceleb1/list_test_hard2.txt")) == 2
    assert len(result["trials"]) == 2

    # resumable: a second run converts nothing and re-extracts nothing
    stamp = (root / "voxceleb2/wav/id00012/v0/00001.wav").stat().st_mtime_ns
    calls = []
    prepare_voxceleb(src, root, trials, converter=lambda s, d, r: calls.append(s), progress=False)
    assert calls == [] and (root / "voxceleb2/wav/id00012/v0/00001.wav").stat().st_mtime_ns == stamp


def test_corrupt_and_truncated_zip_are_rejected(tmp_path):
    staging = tmp_path / "s"
    _vox1_tree(staging, ["id10001"])
    archive = tmp_path / "vox1_dev_wav.zip"
    _zip(staging, archive)
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrepareError, match="truncated.zip: not a readable zip"):
        extract_zip(truncated, tmp_path / "out")
    corrupt = bytearray(data)
    header = data.index(b"PK\x03\x04") + 30 + len("wav/id10001/vid0/00001.wav") + 200  # inside the first member
    corrupt[header:header + 8] = b"\x00" * 8
    (tmp_path / "corrupt.zip").write_bytes(bytes(corrupt))
    with pytest.raises(PrepareError, match=r"corrupt.zip: member wav/id10001/vid0/00001.wav is corrupted"):
        extract_zip(tmp_path / "corrupt.zip", tmp_path / "out2")


def test_checksum_mismatch_names_the_archive(downloads, tmp_path):
    src, trials = downloads
    sums = tmp_path / "md5.txt"
    sums.write_text(f"{'0' * 32}  vox1_dev_wav.zip\n{md5sum(src / 'vox1_dev_wav.zip')}  other.zip\n")
    with pytest.raises(PrepareError, match="vox1_dev_wav.zip: md5 .* expected 0{32}"):
        prepare_voxceleb(src, tmp_path / "data", trials, checksums=sums, versions=("1",))
    (tmp_path / "bad.txt").write_text("nonsense\n")
    with pytest.raises(PrepareError, match="bad.txt: line 1"):
        prepare_voxceleb(src, tmp_path / "data", checksums=tmp_path / "bad.txt")


def test_missing_trial_audio_is_listed(downloads, tmp_path):
    src, trials = downloads
    (trials / "veri_test2.txt").write_text("1 id10300/vid0/00001.wav id99999/x/00001.wav\n")
    with pytest.raises(PrepareError, match=r"(?s)veri_test2.txt: 1 utterance\(s\) have no audio.*id99999/x/00001.wav"):
        prepare_voxceleb(src, tmp_path / "data", trials, versions=("1",))


def test_missing_ffmpeg_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(PrepareError, match="ffmpeg was not found"):
        convert_all([(tmp_path / "a.m4a", tmp_path / "a.wav")], progress=False)


def test_failed_conversions_are_reported_together(tmp_path):
    def broken(src, dst, rate):
        raise OSError("cannot decode")

    pairs = [(tmp_path / f"{i}.m4a", tmp_path / f"{i}.wav") for i in range(3)]
    with pytest.raises(PrepareError, match=r"(?s)3 of 3 conversions failed:.*0.m4a: cannot decode"):
        convert_all(pairs, broken, progress=False)


def test_vox1_folder_layout_and_cli(tmp_path):
    src = tmp_path / "src"
    _vox1_tree(src / "vox1_dev_wav", ["id10001"])
    _vox1_tree(src / "vox1_test_wav", ["id10270"])
    code = main(["voxceleb", str(src), "--data-root", str(tmp_path / "data"), "--versions", "1"])
    assert code == 0
    manifest = read_manifest(tmp_path / "data/voxceleb1/train.csv")
    assert set(manifest.speakers) == {"id10001"}  # test speakers never train
    assert (tmp_path / "data/voxceleb1/wav/id10270/vid0/00001.wav").is_file()
    assert main(["voxceleb", str(tmp_path / "nothing"), "--data-root", str(tmp_path / "d")]) == 2


def test_prepare_musan_and_rirs(tmp_path):
    musan = tmp_path / "musan"
    _wav(musan / "noise/free-sound/noise-0001.wav", 12.4)  # 2 chunks of 5 s + 2.4 s remainder kept
    _wav(musan / "music/fma/music-0001.wav", 5.5, rate=8000)  # resampled; 0.5 s remainder dropped
    _wav(musan / "speech/librivox/speech-0001.wav", 3.0)
    out = prepare_musan(musan, tmp_path / "data", chunk_seconds=5.0)
    noise = sorted((out / "noise/free-sound").glob("*.wav"))
    assert [p.name for p in noise] == ["noise-0001_000.wav", "noise-0001_001.wav", "noise-0001_002.wav"]
    assert sf.info(str(noise[-1])).frames == int(2.4 * SR)
    music = list((out / "music").rglob("*.wav"))
    assert len(music) == 1 and sf.info(str(music[0])).samplerate == SR
    listing = (out / "list.csv").read_text().splitlines()
    assert listing[0] == "File,Category,Duration" and len(listing) == 1 + 3 + 1 + 1
    assert listing[1].startswith("musan_split/")

    rirs = tmp_path / "RIRS_NOISES"
    _wav(rirs / "simulated_rirs/smallroom/Room001/Room001-00001.wav", 0.2)
    _wav(rirs / "simulated_rirs/smallroom/Room001/Room001-00002.wav", 0.2, rate=8000)
    listed = prepare_rirs(rirs, tmp_path / "data")
    lines = listed.read_text().splitlines()
    assert len(lines) == 3 and ",8000," in lines[2]
    (rirs / "simulated_rirs/smallroom/Room001/broken.wav").write_bytes(b"RIFF0000")
    with pytest.raises(PrepareError, match="broken.wav: not a readable"):
        prepare_rirs(rirs, tmp_path / "data")
    with pytest.raises(PrepareError, match="missing MUSAN folder"):
        prepare_musan(tmp_path / "data", tmp_path / "x")
