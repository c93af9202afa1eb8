"""End to end: the reliability check's bad inputs, each through `sslsv train` and `sslsv evaluate` with its own trial list.

Files that should load train and evaluate; a bad file stops training before the first step and evaluation before
the first embedding, with one line naming the file, exit status 2 and no traceback. Bad manifests and trial lists
are refused the same way.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import sslsv.evaluation.evaluate as evaluate_module
from sslsv.cli.evaluate import main as evaluate_main
from sslsv.cli.train import main as train_main
from tests.bad_audio_cases import make_bad_inputs
from tests.tiny_corpus import make_tiny_corpus, tiny_overrides

CONFIG = str(Path(__file__).resolve().parents[1] / "configs/simclr/fast_resnet34.yml")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Data root with the tiny corpus and the bad-input cases under cases/."""
    root = make_tiny_corpus(tmp_path_factory.mktemp("bad_inputs"))
    cases = make_bad_inputs(root / "cases")
    return root, cases


def _relative(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def _manifest(root: Path, name: str, extra_rows: list[str], header: str = "File,Speaker,Session") -> str:
    lines = (root / "tiny/train.csv").read_text().splitlines()
    path = root / "lists" / f"{name}.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join([header] + lines[1:] + extra_rows) + "\n")
    return _relative(root, path)


def _trials(root: Path, name: str, extra: list[tuple[str, str, str]], tabs: bool = False) -> Path:
    """The tiny trial list plus `extra` (label, enroll, test) lines; tab-separated fields allow paths with spaces."""
    rows = [tuple(line.split()) for line in (root / "tiny/trials.txt").read_text().splitlines()] + extra
    path = root / "lists" / f"{name}_trials.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(("\t" if tabs else " ").join(row) + "\n" for row in rows))
    return path


def _train(root: Path, run_dir: Path, manifest: str, *extra: str) -> int:
    overrides = tiny_overrides(root, run_dir, **{"dataset.manifest": manifest, "trainer.epochs": 1,
                                                 "trainer.max_steps_per_epoch": 1})
    return train_main([CONFIG, *overrides, *extra])


def _one_error_line(stderr: str, *names: str) -> None:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert any(name in stderr for name in names), stderr


@pytest.fixture
def no_embedding(monkeypatch):
    """Fails the test if evaluation computes any embedding."""
    def refuse(*args, **kwargs):
        raise AssertionError("an embedding was computed before the bad input was refused")

    monkeypatch.setattr(evaluate_module, "extract_embeddings", refuse)


def test_files_that_should_load_train_validate_and_evaluate(corpus, tmp_path, capsys):
    root, cases = corpus
    good = [path for path, should_load in cases.values() if should_load]
    rows = [f"{_relative(root, p)},idcase,case{i}" for i, p in enumerate(good)]
    tiny = "tiny/wav/id00000/ses0/00000.wav"
    trials = _trials(root, "good", [("0", _relative(root, p), tiny) for p in good], tabs=True)
    run_dir = tmp_path / "run"
    status = _train(root, run_dir, _manifest(root, "good", rows), "trainer.validate_every=1",
                    f"trainer.validation_trials={_relative(root, trials)}")
    assert status == 0, capsys.readouterr().err
    assert evaluate_main([str(run_dir), "--trials", str(trials), "--audio-root", str(root)]) == 0


@pytest.mark.parametrize("name", ["missing", "empty", "zero_frames", "text_as_wav", "truncated_header",
                                  "data_shorter_than_header", "short_0.05s", "one_sample", "directory"])
def test_bad_file_stops_training_at_start_and_evaluation_before_embedding(corpus, tmp_path, tiny_run, capsys,
                                                                          no_embedding, name):
    root, cases = corpus
    path = cases[name][0]
    run_dir = tmp_path / "run"
    assert _train(root, run_dir, _manifest(root, name, [f"{_relative(root, path)},idcase,case"])) == 2
    _one_error_line(capsys.readouterr().err, path.name)
    assert not (run_dir / "checkpoints").exists()  # not one step was taken

    trials = _trials(root, name, [("1", _relative(root, path), "tiny/wav/id00000/ses0/00000.wav")])
    assert evaluate_main([str(tiny_run), "--trials", str(trials), "--audio-root", str(root)]) == 2
    _one_error_line(capsys.readouterr().err, path.name)


@pytest.mark.parametrize("name", ["nan_samples", "inf_samples"])
def test_non_finite_audio_is_refused_in_training_and_evaluation(corpus, tmp_path, tiny_run, capsys, name):
    root, cases = corpus
    path = cases[name][0]
    manifest = _manifest(root, name, [f"{_relative(root, path)},idcase,case"])
    # the deep check decodes every file before the first step
    assert _train(root, tmp_path / "deep", manifest, "dataset.check_manifest_deep=true") == 2
    _one_error_line(capsys.readouterr().err, path.name)
    assert not (tmp_path / "deep" / "checkpoints").exists()
    # without it, the first read of the file stops training with the file and its manifest line
    # batch 25 = every file of the manifest in the first batch
    assert _train(root, tmp_path / "run", manifest, "dataset.batch_size=25") == 2
    _one_error_line(capsys.readouterr().err, path.name)
    assert not list((tmp_path / "run").glob("*.pt"))

    trials = _trials(root, name, [("1", _relative(root, path), "tiny/wav/id00000/ses0/00000.wav")])
    assert evaluate_main([str(tiny_run), "--trials", str(trials), "--audio-root", str(root)]) == 2
    _one_error_line(capsys.readouterr().err, path.name)


def test_bad_manifests_are_refused_naming_the_manifest(corpus, tmp_path, capsys):
    root, cases = corpus
    no_speaker = _manifest(root, "no_speaker", [], header="File,Session")
    assert _train(root, tmp_path / "a", no_speaker) == 2
    _one_error_line(capsys.readouterr().err, "no_speaker.csv")

    first = (root / "tiny/train.csv").read_text().splitlines()[1]
    duplicate = _manifest(root, "duplicate", [first])
    assert _train(root, tmp_path / "b", duplicate) == 2
    _one_error_line(capsys.readouterr().err, "duplicate.csv")


def test_bad_trial_lists_are_refused_before_any_embedding(corpus, tiny_run, capsys, no_embedding):
    root, _ = corpus
    malformed = _trials(root, "malformed", [("1", "only-one-path.wav")])
    assert evaluate_main([str(tiny_run), "--trials", str(malformed), "--audio-root", str(root)]) == 2
    _one_error_line(capsys.readouterr().err, "malformed_trials.txt")

    missing = _trials(root, "missing_file", [("1", "cases/nowhere.wav", "tiny/wav/id00000/ses0/00000.wav")])
    assert evaluate_main([str(tiny_run), "--trials", str(missing), "--audio-root", str(root)]) == 2
    _one_error_line(capsys.readouterr().err, "nowhere.wav")
