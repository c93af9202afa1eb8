"""No silent overwrites: evaluate, fuse, analyze and pseudo-label refuse an existing output (one line naming it, exit
2) before any model is loaded, unless --force; output names carry the trial set, the back-ends and the weights."""
import json
import shutil

import pytest

import sslsv.runs
from sslsv.cli import main
from sslsv.runs import RunLayout
from tests.evaluation.test_embedding_cache import write_run
from tests.tiny_corpus import make_tiny_corpus

TRIALS = "tiny/trials.txt"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_overwrite")
    data = make_tiny_corpus(root / "data", speakers=2, sessions=2, utterances=2)
    run = write_run(data, root / "simclr" / "run")
    shutil.copy(RunLayout(run).model, RunLayout(run).model_best)
    return run


@pytest.fixture
def loads(monkeypatch):
    """Counts model loads: a refusal must come before any."""
    calls = []
    original = sslsv.runs.load_model

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    for module in ("sslsv.runs", "sslsv.evaluation.evaluate", "sslsv.evaluation.fusion"):
        monkeypatch.setattr(f"{module}.load_model", counted)
    return calls


def refused(capsys, name: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and "pass --force" in err, err


def test_evaluate_refuses_then_force_replaces(run_dir, loads, capsys):
    layout = RunLayout(run_dir)
    assert main(["evaluate", str(run_dir), "--trials", TRIALS, "--no-cache"]) == 0
    assert layout.score_file("tiny_trials").is_file() and layout.det_plot("tiny_trials").is_file()
    loads.clear()
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--trials", TRIALS]) == 2
    refused(capsys, "tiny_trials.score")
    assert not loads  # refused before any model work
    # other weights and other back-ends are other names: no refusal
    assert main(["evaluate", str(run_dir), "--trials", TRIALS, "--weights", "best", "--norm", "znorm",
                 "--cohort-size", "4"]) == 0
    assert layout.score_file("tiny_trials_best_znorm").is_file() and layout.det_plot("tiny_trials_best_znorm").is_file()
    results = json.loads(layout.results.read_text())
    assert results["test/tiny_trials_best/znorm"]["weights"].endswith("model_best.pt")
    assert results["test/tiny_trials"]["weights"].endswith("model.pt")  # untouched
    before = layout.score_file("tiny_trials").stat().st_mtime_ns
    assert main(["evaluate", str(run_dir), "--trials", TRIALS, "--force"]) == 0
    assert layout.score_file("tiny_trials").stat().st_mtime_ns >= before


def test_fuse_analyze_pseudo_label_refuse_before_work(run_dir, loads, capsys, tmp_path):
    layout = RunLayout(run_dir)
    calibration = tmp_path / "cal.txt"
    calibration.write_text("1 tiny/wav/a.wav tiny/wav/b.wav\n")
    layout.fusion.mkdir(exist_ok=True)
    (layout.fusion / "trials.json").write_text("{}")  # <trials file stem>.json
    assert main(["fuse", str(run_dir), "--trials", TRIALS, "--calibration-trials", str(calibration)]) == 2
    refused(capsys, "trials.json")
    assert main(["fuse", str(run_dir), "--trials", TRIALS, "--calibration-trials", str(calibration),
                 "--make-calibration", "4", "-o", str(tmp_path / "f")]) == 2
    refused(capsys, "cal.txt")  # --make-calibration would replace the calibration list
    layout.projection_plot("train").write_bytes(b"png")
    assert main(["analyze", str(run_dir), "--manifest", "tiny/train.csv"]) == 2
    refused(capsys, "projection_train.png")
    layout.pseudo_labels.mkdir(exist_ok=True)
    (layout.pseudo_labels / "train.csv").write_text("File,Speaker\n")
    assert main(["pseudo-label", str(run_dir), "--kmeans", "2", "--ahc", "0"]) == 2
    refused(capsys, "train.csv")
    assert not loads
    assert main(["analyze", str(run_dir), "--manifest", "tiny/train.csv", "--projection", "pca",
                 "-o", str(tmp_path / "p.png"), "--force"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000
