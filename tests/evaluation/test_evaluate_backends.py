"""Evaluation back-ends: multi-crop scoring, cohort normalisation through evaluate_run, the compare plot, the CLI."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sslsv.cli.evaluate import main as evaluate_main
from sslsv.evaluation.embeddings import crop_starts, read_crops
from sslsv.evaluation.evaluate import Backends, evaluate_run, slug
from sslsv.runs import RunError, load_model
from sslsv.evaluation.multicrop import multicrop_scores
from sslsv.evaluation.normalization import cohort_statistics, normalize_scores
from sslsv.evaluation.scoring import read_scores

TRIALS = "tiny/small_trials.txt"
KEY = slug(TRIALS)


def write_small_trials(data_root: Path) -> str:
    """A 15-trial list over 6 utterances of 2 speakers (next to the tiny corpus), to keep embedding time small;
    utterance paths relative to the data root, like every trial file's."""
    path = Path(data_root) / TRIALS
    if not path.exists():
        files = [f"tiny/wav/id{s:05d}/ses{v}/{u:05d}.wav" for s in (0, 1) for v, u in ((0, 0), (0, 1), (1, 0))]
        lines = [f"{int(a[:16] == b[:16])} {a} {b}" for i, a in enumerate(files) for b in files[i + 1:]]
        path.write_text("\n".join(lines) + "\n")
    return TRIALS


@pytest.fixture(scope="module")
def trials(tiny_data):
    return write_small_trials(tiny_data)


def _copy_run(run: Path, target: Path) -> Path:
    """A private copy of the shared tiny run (config + weights), so these tests never touch its outputs."""
    target.mkdir(parents=True)
    for name in ("config.yml", "model_avg.pt", "model.pt"):
        shutil.copy(run / name, target / name)
    return target


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_multicrop_scores_equal_direct_computation():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((7, 4, 6)).astype(np.float32)
    enroll, test = rng.integers(0, 7, 50), rng.integers(0, 7, 50)
    direct = np.array([(_unit(emb[e]) @ _unit(emb[t]).T).mean() for e, t in zip(enroll, test)])
    np.testing.assert_allclose(multicrop_scores(emb, enroll, test, batch=8), direct, atol=1e-6)
    np.testing.assert_allclose(multicrop_scores(torch.from_numpy(emb), enroll, test), direct, atol=1e-6)
    with pytest.raises(IndexError):
        multicrop_scores(emb, [7], [0])


def test_crops_are_evenly_spaced_and_short_files_repeated(tmp_path):
    np.testing.assert_array_equal(crop_starts(100, 20, 5), [0, 20, 40, 60, 80])
    np.testing.assert_array_equal(crop_starts(10, 20, 3), [0, 0, 0])
    wave = np.arange(1, 1001, dtype=np.float32) / 1000  # no zeros anywhere
    sf.write(tmp_path / "long.wav", wave, 1000, subtype="FLOAT")
    crops = read_crops(tmp_path / "long.wav", 1000, 0.2, 3)
    assert crops.shape == (3, 200)
    np.testing.assert_allclose(crops[:, 0], wave[[0, 400, 800]])
    np.testing.assert_allclose(crops[-1, -1], wave[-1])
    sf.write(tmp_path / "short.wav", wave[:150], 1000, subtype="FLOAT")
    short = read_crops(tmp_path / "short.wav", 1000, 0.4, 2)
    np.testing.assert_allclose(short[0], np.resize(wave[:150], 400))  # repeated, never zero-padded
    assert (short != 0).all() and np.array_equal(short[0], short[1])


def test_normalisation_matches_reference_and_crop_definition():
    rng = np.random.default_rng(1)
    emb, cohort = rng.standard_normal((6, 8)), _unit(rng.standard_normal((20, 8)))
    enroll, test = rng.integers(0, 6, 30), rng.integers(0, 6, 30)
    raw = (_unit(emb)[enroll] * _unit(emb)[test]).sum(1)
    for method in ("z", "t", "s", "as"):
        expected = normalize_scores(emb, enroll, test, cohort, method=method, top_n=5)
        got = normalize_scores(torch.tensor(emb), enroll, test, cohort, method, 5, scores=raw)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # (U, 1, D) crops are full-length embeddings.
    np.testing.assert_allclose(normalize_scores(emb[:, None], enroll, test, cohort, "as", 5),
                               normalize_scores(emb, enroll, test, cohort, "as", 5), rtol=1e-5, atol=1e-5)
    crops = rng.standard_normal((6, 3, 8))
    scores = multicrop_scores(crops, enroll, test)
    per_utt = np.einsum("und,cd->unc", _unit(crops), cohort).mean(1)  # mean crop cosine with each cohort row
    top = np.sort(per_utt, axis=1)[:, -5:]
    mu, sd = top.mean(1), top.std(1)
    mean, std = cohort_statistics(crops, cohort, 5)
    np.testing.assert_allclose(mean.numpy(), mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), sd, rtol=1e-5, atol=1e-6)
    expected = 0.5 * ((scores - mu[enroll]) / sd[enroll] + (scores - mu[test]) / sd[test])
    got = normalize_scores(torch.tensor(crops), enroll, test, cohort, "as", 5)  # crop scores by default
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_norm_backends_through_evaluate_run(tiny_run, trials, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path / "simclr" / "a")
    backends = Backends(norms=("znorm", "tnorm", "snorm", "asnorm"), cohort_size=6, top_n=4)
    results = evaluate_run(run, [trials], backends=backends, progress=False)
    out = capsys.readouterr().out
    assert "6 of 24 utterances" in out and "speaker labels not used" in out and "asnorm" in out
    plain = results[f"test/{KEY}"]
    for key in ("eer", "min_dcf_001", "act_dcf_001", "cllr", "min_cllr"):
        assert np.isfinite(plain[key])
    assert plain["num_trials"] == 15
    for norm in ("znorm", "tnorm", "snorm", "asnorm"):
        entry = results[f"test/{KEY}/{norm}"]
        assert entry["norm"] == norm and entry["cohort_per"] == "utterance" and entry["cohort_rows"] == 6
        assert entry["num_trials"] == 15 and 0 <= entry["eer"] <= 100 and np.isfinite(entry["cllr"])
        assert len(read_scores(run / "scores" / f"{KEY}_{norm}.score").scores) == 15
    assert results[f"test/{KEY}/asnorm"]["top_n"] == 4 and "top_n" not in results[f"test/{KEY}/znorm"]
    assert len(read_scores(run / "scores" / f"{KEY}.score").scores) == 15
    assert (run / f"hist_{KEY}_znorm_tnorm_snorm_asnorm.png").stat().st_size > 1000
    assert (run / f"det_{KEY}_znorm_tnorm_snorm_asnorm.png").is_file()
    assert json.loads((run / "results.json").read_text()) == results
    with pytest.raises(RunError, match="unknown normalisation"):
        Backends(norms=("cnorm",))


def test_multicrop_backend_and_compare(tiny_run, trials, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path / "simclr" / "b")
    other = _copy_run(tiny_run, tmp_path / "dino" / "c")
    backends = Backends(norms=("asnorm",), crops=3, crop_seconds=0.5, cohort_size=4, cohort_labels=True)
    results = evaluate_run(run, [trials], backends=backends, progress=False, compare=[other])
    out = capsys.readouterr().out
    assert "averaged per speaker" in out and "USES speaker labels" in out
    assert "simclr/b" in out and "dino/c" in out  # a table row per run
    assert (run / f"det_{KEY}_crops3x0.5s_asnorm_compare.png").stat().st_size > 1000
    assert not (other / "results.json").exists()  # compared runs are read, not written
    assert f"test/{KEY}" not in results  # multi-crop replaces the full-length scores
    entry = results[f"test/{KEY}/crops3x0.5s_asnorm"]
    assert entry["cohort_per"] == "speaker" and entry["top_n"] == entry["cohort_rows"] <= 4 and entry["crops"] == 3
    assert (run / "scores" / f"{KEY}_crops3x0.5s_asnorm.score").is_file()
    written = read_scores(run / "scores" / f"{KEY}_crops3x0.5s.score")
    assert results[f"test/{KEY}/crops3x0.5s"]["num_trials"] == len(written.scores) == 15
    # Direct computation: every crop of every utterance through the model at once, N x N cosine means in numpy.
    model, config, _ = load_model(run)
    names = sorted(set(written.enroll) | set(written.test))
    audio = Path(config.dataset.data_root)
    crops = np.concatenate([read_crops(audio / name, 16000, 0.5, 3) for name in names])
    with torch.no_grad():
        emb = _unit(model(torch.from_numpy(crops)).numpy().astype(np.float64)).reshape(len(names), 3, -1)
    row = {name: i for i, name in enumerate(names)}
    direct = [(emb[row[e]] @ emb[row[t]].T).mean() for e, t in zip(written.enroll, written.test)]
    np.testing.assert_allclose(written.scores, direct, atol=2e-5)


def test_evaluate_cli_flags(monkeypatch, tmp_path, capsys):
    import sslsv.evaluation.evaluate as evaluate

    calls = []
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert evaluate_main(["RUN", "--trials", "demo", "--norm", "znorm", "asnorm", "--cohort-size", "100", "--top-n",
                          "50", "--cohort-labels", "--crops", "5", "--crop-seconds", "2", "--compare", "A", "B"]) == 0
    (run, names), kwargs = calls[-1]
    backends = kwargs["backends"]
    assert run == "RUN" and names == ["demo"] and kwargs["compare"] == ["A", "B"]
    assert backends.norms == ("znorm", "asnorm") and backends.cohort_size == 100 and backends.top_n == 50
    assert backends.cohort_labels and backends.crops == 5 and backends.crop_seconds == 2.0
    assert backends.names() == ["crops5x2s", "crops5x2s_znorm", "crops5x2s_asnorm"]
    assert calls[-1][1]["audio_root"] is None
    assert evaluate_main(["RUN", "--trials", "demo", "--audio-root", "/fast/disk"]) == 0
    backends = calls[-1][1]["backends"]
    assert backends.names() == ["cosine"] and not backends.cohort_labels and backends.cohort_size == 6000
    assert calls[-1][1]["audio_root"] == "/fast/disk"
    with pytest.raises(SystemExit) as error:
        evaluate_main(["RUN", "--crop-seconds", "2"])
    assert error.value.code == 2 and "--crops" in capsys.readouterr().err
