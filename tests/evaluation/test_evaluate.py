"""evaluate.py end to end on a tiny trained run: scores, results.json, DET plot, table, most recent run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sslsv.evaluation.evaluate import evaluate_run
from sslsv.runs import RunError, latest_run, load_model
from sslsv.evaluation.scoring import read_scores
from tests.evaluation.test_evaluate_backends import write_small_trials

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tiny_run, tiny_data):
    write_small_trials(tiny_data)
    return tiny_run


TRIALS = "tiny/small_trials.txt"


def test_evaluate_run_writes_every_output(run, capsys):
    results = evaluate_run(run, [TRIALS], random_baseline=True, progress=False)
    table = capsys.readouterr().out
    assert "trained" in table and "random weights" in table and "EER" in table
    stored = json.loads((run / "results.json").read_text())
    for key in ("test/tiny_small_trials", "test/tiny_small_trials_random"):
        assert 0 <= stored[key]["eer"] <= 100 and stored[key]["num_trials"] > 0
    assert stored["test/tiny_small_trials"]["weights"].endswith("model_avg.pt")
    scores = read_scores(run / "scores" / "tiny_small_trials.score")
    trial_lines = (Path(load_model(run)[1].dataset.data_root) / TRIALS).read_text().split("\n")
    assert len(scores.scores) == len([line for line in trial_lines if line.strip()])
    assert np.all(np.abs(scores.scores) <= 1.0 + 1e-5)
    assert (run / "det_tiny_small_trials.png").stat().st_size > 0
    assert results == stored


def test_best_weights_are_model_best(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "model_best.pt").unlink(missing_ok=True)
    with pytest.raises(RunError, match="model_best.pt is missing"):
        load_model(copy, best=True)
    shutil.copy(copy / "model.pt", copy / "model_best.pt")
    assert load_model(copy, best=True)[2].endswith("model_best.pt")
    results = evaluate_run(copy, [TRIALS], best=True, progress=False, plots=False)
    assert results["test/tiny_small_trials_best"]["weights"].endswith("model_best.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run([sys.executable, "evaluate.py", str(copy), "--weights", "newest"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'newest'" in bad.stderr


def test_latest_run_and_missing_run(run, tmp_path):
    assert latest_run(run.parent.parent) == run
    with pytest.raises(RunError, match="no trained run"):
        latest_run(tmp_path)
    with pytest.raises(RunError, match="config.yml is missing"):
        load_model(tmp_path)


def test_evaluate_cli(run):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "evaluate.py", str(run), "--trials", TRIALS, "--force"], cwd=ROOT,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert TRIALS in result.stdout and "EER" in result.stdout
    bad = subprocess.run([sys.executable, "evaluate.py", str(run), "--trials", "vox1_Q"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "vox1_O" in bad.stderr and "Traceback" not in bad.stderr


def test_analyze_prints_srr_and_nmi(run, capsys):
    from sslsv.cli import main

    assert main(["analyze", str(run), "--manifest", "tiny/train.csv"]) == 0
    out = capsys.readouterr().out
    assert "NMI(speaker)" in out and "SRR" in out
    assert (run / "projection_train.png").stat().st_size > 0

    # the extraction settings of evaluate.py: bf16 NHWC embeddings give (nearly) the same analysis; fp16 is refused
    # on a CPU in one line naming the key
    import re

    assert main(["analyze", str(run), "--manifest", "tiny/train.csv", "--amp", "bf16", "--channels-last",
                 "-o", str(run / "projection_bf16.png")]) == 0
    bf16 = capsys.readouterr().out
    assert (run / "projection_bf16.png").stat().st_size > 0

    def srr(text):
        return float(re.search(r"SRR\D*([-\d.]+)", text).group(1))

    assert srr(bf16) == pytest.approx(srr(out), rel=0.05)
    assert main(["analyze", str(run), "--manifest", "tiny/train.csv", "--amp", "fp16", "-o",
                 str(run / "projection_fp16.png")]) == 2
    assert "evaluation.amp: amp fp16 needs a CUDA device" in capsys.readouterr().err
