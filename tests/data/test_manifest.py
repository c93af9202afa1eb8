import numpy as np
import pytest
import soundfile as sf

from sslsv.data.manifest import (
    Manifest,
    ManifestError,
    check_manifest,
    import_kaldi,
    read_manifest,
    session_of,
    write_manifest,
)

SR = 16000


def _wav(path, seconds, sr=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32), sr)


@pytest.fixture
def corpus(tmp_path):
    for name, seconds in [("id1/s1/a.wav", 2.0), ("id1/s2/b.wav", 3.0), ("id2/s1/c.wav", 2.5)]:
        _wav(tmp_path / "wav" / name, seconds)
    return tmp_path


def test_read_good_manifest_and_check_returns_durations(corpus):
    csv = corpus / "train.csv"
    csv.write_text("Speaker,File,Extra\nid1,wav/id1/s1/a.wav,x\n\nid1,wav/id1/s2/b.wav,y\nid2,wav/id2/s1/c.wav,z\n")
    manifest = read_manifest(csv)
    assert len(manifest) == 3
    assert manifest.files[1] == "wav/id1/s2/b.wav"
    assert manifest.sessions == ["s1", "s2", "s1"]  # default: the parent folder
    assert manifest.durations is None
    assert manifest.line_numbers == [2, 4, 5]  # blank line 3 skipped, numbering kept
    labels, names = manifest.speaker_ids()
    assert names == ["id1", "id2"] and labels.tolist() == [0, 0, 1]
    durations = check_manifest(manifest, corpus, SR, min_seconds=1.0)
    assert durations == pytest.approx([2.0, 3.0, 2.5])


def test_optional_columns_and_round_trip(corpus, tmp_path):
    csv = corpus / "m.csv"
    csv.write_text("File,Speaker,Session,Duration\nwav/id1/s1/a.wav,id1,sesA,2.0\nwav/id2/s1/c.wav,id2,,2.5\n")
    manifest = read_manifest(csv)
    assert manifest.sessions == ["sesA", "s1"] and manifest.durations == [2.0, 2.5]
    write_manifest(manifest, tmp_path / "out" / "copy.csv")
    again = read_manifest(tmp_path / "out" / "copy.csv")
    assert (again.files, again.speakers, again.sessions, again.durations) == (
        manifest.files, manifest.speakers, manifest.sessions, manifest.durations)


def test_unusable_files_are_all_reported_in_one_error(corpus):
    (corpus / "wav" / "empty.wav").write_bytes(b"")
    (corpus / "wav" / "notes.wav").write_text("definitely not audio")
    _wav(corpus / "wav" / "short.wav", 0.5)
    csv = corpus / "train.csv"
    csv.write_text(
        "File,Speaker\n"
        "wav/id1/s1/a.wav,id1\n"
        "wav/missing.wav,id1\n"
        "wav/empty.wav,id2\n"
        "wav/notes.wav,id2\n"
        "wav/short.wav,id2\n"
    )
    manifest = read_manifest(csv)
    with pytest.raises(ManifestError) as info:
        check_manifest(manifest, corpus, SR, min_seconds=1.0)
    message = str(info.value)
    assert message.startswith(f"{csv}: 4 of 5 rows are unusable")
    assert "line 3: wav/missing.wav: no such file" in message
    assert "line 4: wav/empty.wav: empty file (0 bytes)" in message
    assert "line 5: wav/notes.wav: not a readable audio file" in message
    assert "line 6: wav/short.wav: too short (0.50 s < 1.00 s)" in message
    assert "a.wav" not in message


def test_sample_rate_only_reported_when_resampling_is_disallowed(corpus):
    _wav(corpus / "wav" / "rate8k.wav", 2.0, sr=8000)
    csv = corpus / "m.csv"
    csv.write_text("File,Speaker\nwav/id1/s1/a.wav,id1\nwav/rate8k.wav,id1\n")
    manifest = read_manifest(csv)
    assert check_manifest(manifest, corpus, SR, 1.0) == pytest.approx([2.0, 2.0])
    with pytest.raises(ManifestError, match="line 3: wav/rate8k.wav: sample rate 8000 Hz, expected 16000 Hz"):
        check_manifest(manifest, corpus, SR, 1.0, allow_resample=False)


def test_listing_is_truncated_and_parallel_check_keeps_order(tmp_path):
    rows = [f"missing/{i}.wav,spk" for i in range(700)]
    (tmp_path / "m.csv").write_text("File,Speaker\n" + "\n".join(rows) + "\n")
    manifest = read_manifest(tmp_path / "m.csv")
    with pytest.raises(ManifestError) as info:
        check_manifest(manifest, tmp_path, SR, None, workers=4)
    message = str(info.value)
    assert "700 of 700 rows are unusable" in message
    assert "line 2: missing/0.wav: no such file" in message and "line 51: missing/49.wav" in message
    assert "missing/50.wav" not in message and "... and 650 more" in message


def test_header_and_row_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Path,Label\na.wav,x\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) File, Speaker.*columns present: Path, Label"):
        read_manifest(bad)
    bad.write_text("")
    with pytest.raises(ManifestError, match="empty manifest"):
        read_manifest(bad)
    bad.write_text("File,Speaker\n")
    with pytest.raises(ManifestError, match="empty manifest"):
        read_manifest(bad)
    bad.write_text("File,Speaker\na.wav,x\nb.wav,y\n ,z\n")
    with pytest.raises(ManifestError, match="line 4: blank File"):
        read_manifest(bad)
    bad.write_text("File,Speaker,Duration\na.wav,x,1.0\nb.wav,y,long\n")
    with pytest.raises(ManifestError, match="line 3: Duration 'long'"):
        read_manifest(bad)
    bad.write_text("File,Speaker\na.wav,x\nb.wav\n")
    with pytest.raises(ManifestError, match="line 3: expected 2 columns"):
        read_manifest(bad)


def test_session_of():
    assert session_of("id10001/1zcIwhmdeo4/00001.wav") == "1zcIwhmdeo4"


def test_import_kaldi(corpus, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}_outside.wav"
    _wav(outside, 1.0)
    (tmp_path / "wav.scp").write_text(
        f"utt1 {corpus / 'wav/id1/s1/a.wav'}\n\nutt2 {corpus / 'wav/id2/s1/c.wav'}\nutt3 {outside}\n")
    (tmp_path / "utt2spk").write_text("utt1 id1\nutt2 id2\nutt3 id3\n")
    manifest = import_kaldi(tmp_path / "wav.scp", tmp_path / "utt2spk", tmp_path / "out.csv", corpus)
    assert manifest.files[:2] == ["wav/id1/s1/a.wav", "wav/id2/s1/c.wav"]
    assert manifest.files[2] == str(outside.resolve())  # outside the data root: kept absolute
    again = read_manifest(tmp_path / "out.csv")
    assert again.files == manifest.files and again.speakers == ["id1", "id2", "id3"]
    assert again.sessions[:2] == ["s1", "s1"]
    check_manifest(again, corpus, SR, 0.5)

    (tmp_path / "wav.scp").write_text("utt1 a.wav\nutt2 sox b.flac -t wav - |\n")
    with pytest.raises(ManifestError, match=r"wav.scp: line 2: piped command"):
        import_kaldi(tmp_path / "wav.scp", tmp_path / "utt2spk", tmp_path / "out.csv", corpus)
    (tmp_path / "wav.scp").write_text("utt1 a.wav\nutt9 b.wav\n")
    with pytest.raises(ManifestError, match="line 2: utterance 'utt9' has no speaker"):
        import_kaldi(tmp_path / "wav.scp", tmp_path / "utt2spk", tmp_path / "out.csv", corpus)


def test_manifest_dataclass_defaults():
    manifest = Manifest(["a/b/c.wav"], ["a"], None, None, "x.csv")
    assert manifest.line_of(0) == 2 and len(manifest) == 1


def test_subset_picks_every_column_alike(tmp_path):
    (tmp_path / "m.csv").write_text("File,Speaker,Session,Duration\na.wav,s1,x,1.0\n\nb.wav,s2,y,2.0\nc.wav,s1,z,3.0\n")
    manifest = read_manifest(tmp_path / "m.csv")
    sub = manifest.subset(np.array([2, 0]))
    assert sub.files == ["c.wav", "a.wav"] and sub.speakers == ["s1", "s1"] and sub.sessions == ["z", "x"]
    assert sub.durations == [3.0, 1.0] and sub.path == manifest.path
    assert sub.line_of(0) == 5 and sub.line_of(1) == 2  # still lines of the original file
    assert len(manifest) == 3  # unchanged
    masked = manifest.subset(np.array([False, True, True]), tmp_path / "out.csv", speakers=["c1", "c2"])
    assert masked.files == ["b.wav", "c.wav"] and masked.speakers == ["c1", "c2"] and masked.sessions == ["y", "z"]
    assert masked.path == str(tmp_path / "out.csv") and masked.line_of(0) == 2  # a new file's lines
    write_manifest(masked, masked.path)
    assert read_manifest(masked.path).files == masked.files
    assert len(manifest.subset([])) == 0
    plain = Manifest(["a", "b"], ["s", "t"], None, None, "p.csv")
    assert plain.subset([1]).line_of(0) == 3 and plain.subset([1]).sessions is None
    with pytest.raises(ManifestError, match="1 speaker labels for a subset of 2"):
        manifest.subset([0, 1], speakers=["c"])
    with pytest.raises(IndexError, match="subset rows"):
        manifest.subset([3])
    with pytest.raises(IndexError, match="mask"):
        manifest.subset(np.array([True]))


def test_header_check_finds_duplicates_directories_truncated_wavs_and_the_length_floor(corpus):
    (corpus / "wav" / "folder.wav").mkdir()
    whole = (corpus / "wav" / "id1" / "s1" / "a.wav").read_bytes()
    (corpus / "wav" / "cut.wav").write_bytes(whole[: len(whole) // 2])
    _wav(corpus / "wav" / "blip.wav", 0.05)
    csv = corpus / "train.csv"
    csv.write_text(
        "File,Speaker\n"
        "wav/id1/s1/a.wav,id1\n"
        "wav/folder.wav,id1\n"
        "wav/cut.wav,id1\n"
        "wav/./id1/s1/a.wav,id2\n"
        "wav/blip.wav,id2\n"
        "wav/id1/s1/a.wav,id2\n"
    )
    manifest = read_manifest(csv)
    with pytest.raises(ManifestError) as info:
        check_manifest(manifest, corpus, SR, min_seconds=None)  # no minimum asked: the reader's floor applies
    message = str(info.value)
    assert message.startswith(f"{csv}: 5 of 6 rows are unusable")
    assert "line 3: wav/folder.wav: is a directory, not an audio file" in message
    assert "line 4: wav/cut.wav: data shorter than its header (the header says 32000 frames, the file holds" in message
    assert "line 5: wav/./id1/s1/a.wav: duplicate row (the same file is on line 2)" in message
    assert "line 6: wav/blip.wav: too short (0.05 s < 0.10 s)" in message
    assert "line 7: wav/id1/s1/a.wav: duplicate row (the same file is on line 2, 5)" in message
    assert "line 2:" not in message
