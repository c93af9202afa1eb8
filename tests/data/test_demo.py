"""The espeak-ng demo corpus: layout, manifests, trials, determinism, idempotency, the spectral baseline on it and
the `sslsv demo-corpus` command."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("espeakng_loader")

from sslsv.data.demo import DemoCorpusConfig, build_demo_corpus  # noqa: E402
from sslsv.data.manifest import read_manifest  # noqa: E402
from sslsv.data.trials import read_trials  # noqa: E402
from sslsv.evaluation.baselines import spectral_baseline_eer  # noqa: E402

TINY = dict(
    train_speakers=2, val_speakers=2, test_speakers=6, sessions_per_speaker=2, utterances_per_session=3,
    musan_noise=2, musan_music=1, musan_speech=1, rirs=2, musan_seconds=2.0,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_demo_corpus(tmp_path_factory.mktemp("demo_root") / "demo", DemoCorpusConfig(**TINY, workers=2), progress=False)


def _rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_layout(corpus):
    for name in ("train.csv", "val.csv", "test.csv", "trials.txt", "val_trials.txt", "corpus.json"):
        assert (corpus / name).is_file(), name
    assert not (corpus / ".building").exists()
    wavs = sorted((corpus / "wav").rglob("*.wav"))
    assert len(wavs) == (2 + 2 + 6) * 2 * 3
    assert {w.relative_to(corpus / "wav").parts[0] for w in wavs} >= {"id00001", "id00002", "id10001", "id10006"}
    assert (corpus / "wav" / "id10001" / "ses01" / "00001.wav").is_file()
    for sub, count in (("musan/noise", 2), ("musan/music", 1), ("musan/speech", 1), ("rirs", 2)):
        files = sorted((corpus / sub).glob("*.wav"))
        assert len(files) == count, sub
        for f in files:
            info = sf.info(str(f))
            assert info.samplerate == 16000 and info.channels == 1
            assert np.abs(sf.read(str(f))[0]).max() > 0.01
    meta = json.loads((corpus / "corpus.json").read_text())
    assert meta["config"]["seed"] == 0 and len(meta["speakers"]) == 10
    assert {"language", "variant", "pitch", "rate", "formant_scale"} <= set(meta["speakers"][0])


def test_manifests_match_files(corpus):
    root = corpus.parent
    speakers = {}
    for role in ("train", "val", "test"):
        rows = _rows(corpus / f"{role}.csv")
        assert rows and list(rows[0]) == ["File", "Speaker", "Session", "Duration"]
        speakers[role] = {r["Speaker"] for r in rows}
        for r in rows:
            assert r["File"].startswith("demo/wav/" + r["Speaker"] + "/" + r["Session"] + "/")
            info = sf.info(str(root / r["File"]))
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert abs(info.frames / 16000 - float(r["Duration"])) < 1e-3
            assert 1.5 - 1e-3 <= float(r["Duration"]) <= 6.0 + 1e-3
            x = sf.read(str(root / r["File"]))[0]
            assert 0.005 < np.abs(x).max() < 1.0
    assert not speakers["train"] & speakers["val"] and not speakers["train"] & speakers["test"]
    assert not speakers["val"] & speakers["test"]
    assert all(s.startswith("id1") for s in speakers["test"]) and all(s.startswith("id0") for s in speakers["train"])


@pytest.mark.parametrize("name,role", [("trials.txt", "test"), ("val_trials.txt", "val")])
def test_trials(corpus, name, role):
    lines = [line.split() for line in (corpus / name).read_text().splitlines()]
    assert lines and all(len(line) == 3 for line in lines)
    labels = [int(line[0]) for line in lines]
    assert set(labels) == {0, 1} and 0.3 < np.mean(labels) < 0.7
    role_speakers = {r["Speaker"] for r in _rows(corpus / f"{role}.csv")}
    train_speakers = {r["Speaker"] for r in _rows(corpus / "train.csv")}
    for label, a, b in lines:
        assert (corpus / "wav" / a).is_file() and (corpus / "wav" / b).is_file()
        spk_a, ses_a, spk_b, ses_b = *a.split("/")[:2], *b.split("/")[:2]
        assert {spk_a, spk_b} <= role_speakers and not {spk_a, spk_b} & train_speakers
        assert (spk_a == spk_b) == (label == "1")
        if label == "1":
            assert ses_a != ses_b  # targets across sessions
    assert len({(a, b) for _, a, b in lines}) == len(lines)


def test_same_seed_same_bytes_and_idempotent(corpus, tmp_path):
    # A rebuild with another number of workers gives byte-identical files.
    other = build_demo_corpus(tmp_path / "demo", DemoCorpusConfig(**TINY, workers=1), progress=False)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file() and p.name != "corpus.json")
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file() and p.name != "corpus.json")
    for rel in files:
        assert (corpus / rel).read_bytes() == (other / rel).read_bytes(), rel
    # Building again with the same config returns at once and rewrites nothing.
    stamp = (other / "corpus.json").stat().st_mtime_ns
    start = time.time()
    assert build_demo_corpus(other, DemoCorpusConfig(**TINY, workers=2), progress=False) == other
    assert time.time() - start < 2 and (other / "corpus.json").stat().st_mtime_ns == stamp


def test_other_seed_rebuilds(tmp_path):
    small = dict(TINY, train_speakers=1, val_speakers=1, test_speakers=2, utterances_per_session=1)
    small.update(musan_noise=1, musan_speech=0, musan_music=0, rirs=1)
    out = build_demo_corpus(tmp_path / "demo", DemoCorpusConfig(**small, seed=1), progress=False)
    first = (out / "wav/id10001/ses01/00001.wav").read_bytes()
    (out / "wav/id00001/ses01/00001.wav").unlink()  # an incomplete corpus is rebuilt
    build_demo_corpus(out, DemoCorpusConfig(**small, seed=1), progress=False)
    assert (out / "wav/id00001/ses01/00001.wav").is_file()
    assert (out / "wav/id10001/ses01/00001.wav").read_bytes() == first
    build_demo_corpus(out, DemoCorpusConfig(**small, seed=2), progress=False)
    assert (out / "wav/id10001/ses01/00001.wav").read_bytes() != first
    assert json.loads((out / "corpus.json").read_text())["config"]["seed"] == 2


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "precious.txt").write_text("not a demo corpus")
    with pytest.raises(FileExistsError):
        build_demo_corpus(tmp_path / "demo", DemoCorpusConfig(**TINY), progress=False)


def test_spectral_baseline_is_far_from_zero(corpus):
    eer = spectral_baseline_eer(corpus)
    assert 5.0 < eer < 60.0


def test_package_readers_accept_the_lists(corpus):
    for role in ("train", "val", "test"):
        manifest = read_manifest(corpus / f"{role}.csv")
        assert manifest.sessions is not None and manifest.durations is not None
        assert all((corpus.parent / file).is_file() for file in manifest.files)
    for name in ("trials.txt", "val_trials.txt"):
        trials = read_trials(corpus / name)
        assert len(trials) == len((corpus / name).read_text().splitlines())
        assert 0 < trials.labels.sum() < len(trials)


def test_role_without_speakers_is_complete_and_idempotent(tmp_path):
    small = dict(TINY, train_speakers=1, val_speakers=0, test_speakers=2, utterances_per_session=1)
    small.update(musan_noise=0, musan_speech=0, musan_music=0, rirs=0)
    out = build_demo_corpus(tmp_path / "demo", DemoCorpusConfig(**small), progress=False)
    assert (out / "val.csv").read_text().splitlines() == ["File,Speaker,Session,Duration"]
    assert (out / "val_trials.txt").read_text() == ""
    stamp = (out / "corpus.json").stat().st_mtime_ns
    build_demo_corpus(out, DemoCorpusConfig(**small), progress=False)
    assert (out / "corpus.json").stat().st_mtime_ns == stamp


def test_command(tmp_path, capsys):
    from sslsv.cli.demo_corpus import main

    args = ["--out", str(tmp_path / "demo"), "--train-speakers", "1", "--val-speakers", "1", "--test-speakers", "2",
            "--sessions", "2", "--utterances", "1", "--workers", "1", "--quiet", "--baseline"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 speakers (1 train / 1 val / 2 test)" in out and "utterances" in out
    assert "spectral baseline EER (mean log-mel, cosine):" in out
    assert len(_rows(tmp_path / "demo" / "test.csv")) == 4
