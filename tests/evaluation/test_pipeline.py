"""The one trial-scoring pipeline (score_backends) and what is expressed through it (score_trials, evaluate_model,
the trainer's validation), checked against direct computations on the tiny run: the model run on one utterance at
a time, then cosine scores; crop means and Z-/AS-norm in float64 numpy."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sslsv.data.manifest import read_manifest
from sslsv.data.trials import read_trials
from sslsv.evaluation.evaluate import (Backends, build_run_cohort, embed_utterances, evaluate_model, score_backends,
                                      score_trials)
from sslsv.evaluation.metrics import compute_metrics
from sslsv.evaluation.validation import trial_validator
from sslsv.runs import RunError, load_model
from tests.evaluation.test_evaluate_backends import write_small_trials

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tiny_run, tiny_data):
    trials = write_small_trials(tiny_data)
    model, config, _ = load_model(tiny_run)
    config.evaluation.max_trim = 0.0  # no batch trimming: batched embeddings equal one-by-one ones
    return model, config, trials, Path(tiny_data)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embed(model, waves) -> np.ndarray:
    """The model on one waveform (or one (N, S) stack of crops) at a time, float64 unit rows."""
    with torch.no_grad():
        return np.stack([_unit(model(torch.from_numpy(np.atleast_2d(w))).numpy().astype(np.float64)).squeeze()
                         for w in waves])


def _norms(scores, enroll, test, cohort_scores, top_n):
    """(Z-norm, S-norm) over each utterance's top_n cohort scores, and the smaller std of each trial's two sides."""
    top = np.sort(cohort_scores, axis=1)[:, -top_n:]
    mu, sd = top.mean(1), top.std(1)
    z = (scores - mu[enroll]) / sd[enroll]
    return z, 0.5 * (z + (scores - mu[test]) / sd[test]), np.minimum(sd[enroll], sd[test])


def test_plain_scores_equal_direct_cosine(setup):
    model, config, name, root = setup
    model.train()
    trials, scores = score_trials(model, name, config, CPU, progress=False)
    assert model.training  # the pipeline restores the caller's mode
    model.eval()
    utterances = trials.utterances()
    emb = _embed(model, [sf.read(root / u, dtype="float32")[0] for u in utterances])
    row = {u: i for i, u in enumerate(utterances)}
    direct = [emb[row[e]] @ emb[row[t]] for e, t in zip(trials.enroll, trials.test)]
    np.testing.assert_allclose(scores, direct, atol=2e-5)
    # The same list given as a Trials object and its audio folder: the same scores.
    same, again = score_trials(model, read_trials(root / name), config, CPU, audio_dir=root,
                               progress=False)
    assert same.enroll == trials.enroll and np.array_equal(again, scores)
    with pytest.raises(RunError, match="audio_dir"):
        score_trials(model, read_trials(root / name), config, CPU, progress=False)
    metrics = evaluate_model(model, name, config, CPU, progress=False)
    assert metrics == compute_metrics(scores, trials.labels)
    config.trainer.validation_trials, config.trainer.device = name, "cpu"
    validated = trial_validator(config)(model)
    assert validated["val/eer"] == metrics.eer and validated["val/min_dcf_001"] == metrics.min_dcf_001


@pytest.mark.parametrize("crops", [None, 3])
def test_normalised_and_multicrop_scores_equal_direct_computation(setup, crops, capsys):
    model, config, name, root = setup
    backends = Backends(norms=("znorm", "asnorm"), cohort_size=6, top_n=4, crops=crops, crop_seconds=0.5)
    trials, scores, info = score_backends(model, name, config, CPU, backends,
                                          lambda: build_run_cohort(model, config, CPU, backends, False),
                                          progress=False)
    assert list(scores) == backends.names() and info[backends.names()[2]]["top_n"] == 4
    assert "6 of 24 utterances" in capsys.readouterr().out

    def embed(paths):  # (U, D) unit full-length embeddings, or (U, N, D) unit crop embeddings, in float64
        # The embedding step of the pipeline itself: one-by-one embeddings equal it only to ~1e-6, which the
        # division by a tiny cohort's std amplifies; test_plain_scores_equal_direct_cosine and
        # test_multicrop_backend_and_compare check these embeddings against the model run file by file.
        return _unit(embed_utterances(model, [str(p) for p in paths], config, CPU, backends, False).double().numpy())

    utterances = trials.utterances()
    emb = embed([root / u for u in utterances])
    manifest = read_manifest(root / "tiny" / "train.csv")
    drawn = np.sort(np.random.default_rng(0).choice(len(manifest), 6, replace=False))
    cohort = embed([root / manifest.files[i] for i in drawn])
    if crops is not None:  # cohort rows: mean normalised crops; utterance vectors: mean crops (|m| <= 1)
        emb, cohort = emb.mean(1), cohort.mean(1)
    cohort = _unit(cohort)
    row = {u: i for i, u in enumerate(utterances)}
    enroll = np.array([row[u] for u in trials.enroll])
    test = np.array([row[u] for u in trials.test])
    plain = (emb[enroll] * emb[test]).sum(1)
    np.testing.assert_allclose(scores[backends.base], plain, atol=1e-6)
    z, _, sd_z = _norms(plain, enroll, test, emb @ cohort.T, 6)
    _, asnorm, sd_as = _norms(plain, enroll, test, emb @ cohort.T, 4)
    # The tiny run's cohort scores have stds near 1e-4, which multiply float32 rounding (1e-7) by ~1e3: compare
    # the normalised scores in units of the raw scores (error x std), where they agree to float32 precision.
    assert np.all(np.abs(scores[backends.names()[1]] - z) * sd_z < 1e-6)
    assert np.all(np.abs(scores[backends.names()[2]] - asnorm) * sd_as < 1e-6)
    assert np.corrcoef(scores[backends.names()[2]], asnorm)[0, 1] > 0.999
