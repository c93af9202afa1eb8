"""PLDA back-end: EM recovery of known covariances, the LLR against the closed form, PLDA vs cosine on anisotropic
within-speaker variation, and the back-end end to end through `sslsv evaluate --plda`."""
import json

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from sslsv.cli.evaluate import main as evaluate_main
from sslsv.evaluation.evaluate import Backends
from sslsv.evaluation.metrics import compute_metrics
from sslsv.evaluation.plda import PLDA, PLDAError, TwoCovariancePLDA
from sslsv.evaluation.scoring import cosine_scores, read_scores
from tests.evaluation.test_evaluate_backends import KEY, _copy_run, write_small_trials


def _random_covariance(rng, dim, floor):
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + floor * np.eye(dim)


def _speakers(rng, mean, between, within, speakers, per_speaker):
    """Synthetic embeddings of the two-covariance model: (N, d) and (N,) speaker labels."""
    counts = per_speaker if np.ndim(per_speaker) else np.full(speakers, per_speaker)
    labels = np.repeat(np.arange(speakers), counts)
    y = rng.multivariate_normal(mean, between, speakers)
    noise = rng.multivariate_normal(np.zeros(len(mean)), within, len(labels))
    return y[labels] + noise, labels


def _relative_error(estimate, truth):
    return np.linalg.norm(estimate - truth) / np.linalg.norm(truth)


def test_em_recovers_known_between_and_within_covariances():
    rng = np.random.default_rng(0)
    dim = 4
    mean = rng.standard_normal(dim)
    between, within = _random_covariance(rng, dim, 0.5), _random_covariance(rng, dim, 0.2)
    x, labels = _speakers(rng, mean, between, within, 3000, rng.integers(2, 12, 3000))
    model = TwoCovariancePLDA.fit(x, labels, iterations=10)
    assert _relative_error(model.between, between) < 0.08
    assert _relative_error(model.within, within) < 0.03
    assert np.abs(model.mean - mean).max() < 0.08
    assert np.all(np.diff(model.log_likelihoods) >= -1e-9)  # EM never decreases the likelihood


def test_log_likelihood_and_llr_equal_the_closed_form():
    """Independent of the EM: a model with given (mu, B, W) against scipy's multivariate normal densities."""
    rng = np.random.default_rng(1)
    dim = 5
    mean = rng.standard_normal(dim)
    between, within = _random_covariance(rng, dim, 0.3), _random_covariance(rng, dim, 0.1)
    model = TwoCovariancePLDA(mean, between, within)
    x = rng.standard_normal((30, dim)) * 2
    enroll, test = rng.integers(0, 30, 50), rng.integers(0, 30, 50)
    total = between + within
    same = multivariate_normal(np.r_[mean, mean], np.block([[total, between], [between, total]]))
    alone = multivariate_normal(mean, total)
    expected = [same.logpdf(np.r_[x[e], x[t]]) - alone.logpdf(x[e]) - alone.logpdf(x[t]) for e, t in zip(enroll, test)]
    np.testing.assert_allclose(model.llr(x, enroll, test, batch=7), expected, rtol=1e-9, atol=1e-9)
    # Labelled data: each speaker's utterances are one Gaussian vector of covariance 11^T (x) B + I (x) W.
    labels = np.repeat(np.arange(6), [2, 3, 4, 5, 6, 10])
    joint = sum(multivariate_normal(np.tile(mean, n), np.kron(np.ones((n, n)), between) + np.kron(np.eye(n), within))
                .logpdf(x[labels == s].reshape(-1)) for s, n in enumerate(np.bincount(labels)))
    assert model.log_likelihood(x, labels) == pytest.approx(joint / len(x), rel=1e-10)
    with pytest.raises(IndexError):
        model.llr(x, [30], [0])


def test_plda_beats_cosine_when_within_speaker_variation_is_anisotropic():
    """Speakers spread evenly in 16 dimensions; the within-speaker variation is large along 3 of them (a channel),
    small elsewhere. Cosine weighs every direction alike; PLDA learns to discount the channel directions."""
    rng = np.random.default_rng(2)
    dim = 16
    mean = np.zeros(dim)
    between = np.eye(dim)
    within = np.diag(np.r_[np.full(3, 6.0), np.full(dim - 3, 0.1)])
    train, train_labels = _speakers(rng, mean + 3.0, between, within, 200, 8)
    test, test_labels = _speakers(rng, mean + 3.0, between, within, 40, 5)
    enroll, other = np.triu_indices(len(test), 1)
    labels = (test_labels[enroll] == test_labels[other]).astype(int)
    cosine = compute_metrics(cosine_scores(test, enroll, other), labels).eer
    plda = compute_metrics(PLDA.train(train, train_labels).score(test, enroll, other), labels).eer
    with_lda = compute_metrics(PLDA.train(train, train_labels, lda_dim=10).score(test, enroll, other), labels).eer
    assert cosine > 15 and plda < cosine / 3 and with_lda < cosine / 3, (cosine, plda, with_lda)


def test_plda_preprocessing_crops_and_errors():
    rng = np.random.default_rng(3)
    x, labels = _speakers(rng, np.zeros(6), np.eye(6), 0.2 * np.eye(6), 12, 4)
    plda = PLDA.train(x, labels, lda_dim=4)
    assert plda.dim == 4 and plda.speakers == 12 and plda.utterances == 48
    # The training data after preprocessing: length sqrt(d); the transform is deterministic.
    np.testing.assert_allclose(np.linalg.norm(plda.transform(x), axis=1), 2.0)
    # Scaling an embedding changes nothing (L2-normalised first); crops are averaged after normalisation.
    np.testing.assert_allclose(plda.score(x * 5, [0, 1], [2, 3]), plda.score(x, [0, 1], [2, 3]), rtol=1e-5)
    crops = rng.standard_normal((3, 2, 6))
    mean = (crops / np.linalg.norm(crops, axis=-1, keepdims=True)).mean(axis=1)
    np.testing.assert_allclose(plda.score(crops, [0, 1], [1, 2]), plda.score(mean, [0, 1], [1, 2]), rtol=1e-5)
    with pytest.raises(PLDAError, match="between 1 and 6"):  # the embedding size
        PLDA.train(x, labels, lda_dim=7)
    with pytest.raises(PLDAError, match="between 1 and 2"):  # speakers - 1
        PLDA.train(x, labels % 3, lda_dim=3)
    with pytest.raises(PLDAError, match="at least 2 speakers"):
        PLDA.train(x, np.zeros(len(x)))
    with pytest.raises(PLDAError, match="2 utterances"):
        TwoCovariancePLDA.fit(x, np.arange(len(x)))


def test_plda_backend_end_to_end_through_the_cli(tiny_run, tiny_data, tmp_path, capsys, monkeypatch):
    import sslsv.evaluation.evaluate as evaluate

    trials = write_small_trials(tiny_data)
    run = _copy_run(tiny_run, tmp_path / "simclr" / "p")
    embedded = []
    extract = evaluate.embed_utterances
    monkeypatch.setattr(evaluate, "embed_utterances", lambda model, paths, *a, **k: embedded.extend(paths)
                        or extract(model, paths, *a, **k))
    assert evaluate_main([str(run), "--trials", trials, "--plda", "--norm", "asnorm", "--cohort-size", "6",
                          "--top-n", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "PLDA: 24 utterances of 4 speakers" in out and "USES the speaker labels" in out
    # The 6 trial utterances, then the cohort (6 training files) and the rest of the PLDA's: each file once.
    assert len(embedded) == 6 + 24 and len(set(embedded[6:])) == 24
    results = json.loads((run / "results.json").read_text())
    entry = results[f"test/{KEY}/plda"]
    assert entry["plda_speakers"] == 4 and entry["plda_utterances"] == 24 and entry["plda_lda_dim"] is None
    assert entry["num_trials"] == 15 and 0 <= entry["eer"] <= 100 and np.isfinite(entry["cllr"])
    written = read_scores(run / "scores" / f"{KEY}_plda.score")
    assert len(written.scores) == 15 and np.isfinite(written.scores).all()
    assert f"test/{KEY}/asnorm" in results and " plda " in out  # a table row

    # Pseudo-labels: a manifest whose Speaker column holds cluster ids, here one cluster per speaker and session
    # for 12 of the training files (4 clusters of 3).
    lines = (tiny_data / "tiny" / "train.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[1:13]]
    pseudo = tmp_path / "pseudo.csv"
    pseudo.write_text("File,Speaker\n" + "".join(f"{r[0]},c{r[1][-1]}{r[2][-1]}\n" for r in rows))
    assert evaluate_main([str(run), "--trials", trials, "--plda", "--plda-manifest", str(pseudo),
                          "--plda-lda-dim", "2", "--device", "cpu", "--force"]) == 0
    assert "PLDA: 12 utterances of 4 speakers" in capsys.readouterr().out
    entry = json.loads((run / "results.json").read_text())[f"test/{KEY}/plda"]
    assert entry["plda_manifest"] == str(pseudo) and entry["plda_lda_dim"] == 2 and entry["plda_dim"] == 2
    assert np.isfinite(read_scores(run / "scores" / f"{KEY}_plda.score").scores).all()

    # User errors: one line, exit 2, before any model is loaded.
    monkeypatch.setattr(evaluate, "load_model", lambda *a, **k: pytest.fail("model loaded before the check"))
    assert evaluate_main([str(run), "--trials", trials, "--plda", "--plda-lda-dim", "4"]) == 2
    assert "--plda-lda-dim 4 is more than the 3 (speakers - 1)" in capsys.readouterr().err
    assert evaluate_main([str(run), "--trials", trials, "--plda", "--plda-manifest", "nowhere.csv"]) == 2
    assert "nowhere.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        evaluate_main([str(run), "--plda-lda-dim", "4"])
    assert error.value.code == 2 and "need --plda" in capsys.readouterr().err
    assert Backends(plda=True, crops=2).names() == ["crops2x3s", "crops2x3s_plda"]
