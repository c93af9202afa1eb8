"""What used to end evaluation in a traceback, or worse in `nan` scores with exit status 0, is one `error:` line
and exit status 2 from `sslsv evaluate`: unreadable / empty audio, a trial list of one class, NaN embeddings (a
model with non-finite weights), NaN scores."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import sslsv.evaluation.evaluate as evaluate
from sslsv.cli import main
from sslsv.evaluation.errors import EvaluationError
from sslsv.evaluation.metrics import compute_cllr, compute_eer, compute_metrics
from tests.evaluation.test_evaluate_backends import write_small_trials


def _evaluate(run: Path, trials: str, capsys) -> tuple[int, str]:
    """`sslsv evaluate RUN --trials T` in this process: (exit status, the error line)."""
    code = main(["evaluate", str(run), "--trials", trials])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) <= 1, err
    return code, lines[0] if lines else ""


def _write(path: Path, lines: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def good(tiny_data):
    return write_small_trials(tiny_data)


def test_unreadable_and_empty_audio_name_the_file(tiny_run, tiny_data, capsys):
    bad = Path(tiny_data) / "bad_audio"
    bad.mkdir(exist_ok=True)
    (bad / "text.wav").write_text("this is not audio\n" * 20)
    (bad / "empty.wav").write_bytes(b"")
    good_file = "tiny/wav/id00000/ses0/00000.wav"
    for name in ("text.wav", "empty.wav"):
        trials = _write(bad / f"{name}.txt", [f"1 {good_file} bad_audio/{name}", f"0 {good_file} tiny/wav/id00001/ses0/00000.wav"])
        code, line = _evaluate(tiny_run, trials, capsys)
        assert code == 2 and str(bad / name) in line


def test_single_class_list_is_refused_before_the_model_is_loaded(tiny_run, tiny_data, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "load_model", lambda *a, **k: pytest.fail("model loaded for a one-class list"))
    same = "tiny/wav/id00000/ses0/00000.wav tiny/wav/id00000/ses1/00000.wav"
    trials = _write(Path(tiny_data) / "one_class" / "targets.txt", [f"1 {same}", f"1 {same}"])
    code, line = _evaluate(tiny_run, trials, capsys)
    assert code == 2
    assert line == f"error: verification needs both target and non-target trials: {trials} has 2 target, 0 non-target"


def test_non_finite_weights_give_a_clear_error_not_nan_scores(tiny_run, tmp_path, good, capsys):
    run = tmp_path / "diverged"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "scores", "*.png", "results.json"))
    for weights in run.glob("model*.pt"):  # every weights file evaluation might pick
        state = torch.load(weights, map_location="cpu", weights_only=False)
        tensors = state.get("model", state) if isinstance(state, dict) else state
        name = next(k for k, v in tensors.items() if k.startswith("encoder.") and v.dim() > 1)  # a conv weight
        tensors[name].fill_(float("inf"))
        torch.save(state, weights)
    code, line = _evaluate(run, good, capsys)
    assert code == 2 and "non-finite" in line.lower()
    assert not (run / "results.json").exists() or "nan" not in (run / "results.json").read_text().lower()


def test_nan_scores_are_an_evaluation_error(tiny_run, tmp_path, good, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "scores", "*.png", "results.json"))
    monkeypatch.setattr(evaluate, "cosine_scores", lambda embeddings, enroll, test: np.full(len(enroll), np.nan))
    code, line = _evaluate(run, good, capsys)
    assert code == 2 and line.startswith("error: scores contain 15 NaN value(s) out of 15 trials")
    assert not (run / "scores").exists() and not (run / "results.json").exists()  # nothing with nan written


def test_metrics_raise_evaluation_error():
    for metric in (compute_metrics, compute_eer, compute_cllr):
        with pytest.raises(EvaluationError, match="2 NaN value"):
            metric([0.1, np.nan, np.nan, 0.3], [1, 0, 1, 0])
        with pytest.raises(EvaluationError, match="need both target and non-target trials: 0 target, 3 non-target"):
            metric([0.1, 0.2, 0.3], [0, 0, 0])
