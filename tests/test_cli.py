"""The `sslsv` command line: the dispatcher, the error-to-exit wrapper and the run-level sub-commands."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sslsv
from sslsv.cli import COMMANDS, main
from sslsv.cli.data import prepare_main
from sslsv.cli.errors import run_command
from sslsv.cli.fuse import main as fuse_main
from sslsv.cli.pseudo_labels import build_multistage_parser
from sslsv.cli.run_tools import average_main, embed_main, export_main, score_main
from sslsv.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"


# ------------------------------------------------------------------------------------------------ dispatcher


def test_unknown_subcommand_suggests_the_closest(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'trian'" in err and "did you mean 'train'?" in err
    assert main([]) == 2
    assert "subcommand is required" in capsys.readouterr().err


def test_help_lists_every_subcommand_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert {"train", "evaluate", "demo-corpus", "prepare", "check-manifest", "embed", "score", "fuse", "export",
            "average", "pseudo-label", "multistage", "finetune", "analyze", "profile", "diagnostics",
            "list"} <= set(COMMANDS)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sslsv {__import__('sslsv.cli').cli.version()}"


def test_every_subcommand_has_help_on_every_option(capsys):
    from sslsv.cli import command

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            command(name)(["-h"])
        assert exit_.value.code == 0, name
        assert f"sslsv {name}" in capsys.readouterr().out
    # every option of every parser says what it does
    from sslsv.cli import data, evaluate, fuse, pseudo_labels, train

    parsers = [train.build_parser(), evaluate.build_parser(), fuse.build_parser(), data.build_prepare_parser(),
               pseudo_labels.build_multistage_parser(), pseudo_labels.build_pseudo_label_parser(),
               pseudo_labels.build_finetune_parser()]
    for parser in parsers:
        actions = list(parser._actions)
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):  # sub-parsers
                actions += [a for sub in action.choices.values() for a in sub._actions]
        missing = [a.dest for a in actions if a.help is None and a.dest != "corpus"]
        assert not missing, (parser.prog, missing)


def test_user_error_is_one_line_without_traceback(capsys):
    def broken():
        raise ConfigError("trainer.epochs: must be >= 1, got 0")

    assert run_command(broken) == 2
    err = capsys.readouterr().err
    assert err == "error: trainer.epochs: must be >= 1, got 0\n"

    def interrupted():
        raise KeyboardInterrupt

    assert run_command(interrupted) == 130
    assert "interrupted" in capsys.readouterr().err

    def bug():
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        run_command(bug)


def test_user_error_through_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sslsv.cli", "train", str(tmp_path / "missing.yml")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and "missing.yml" in result.stderr


def test_help_into_a_closed_pipe_is_quiet():
    result = subprocess.run(f"{sys.executable} -m sslsv.cli -h | head -1", shell=True, cwd=ROOT,
                            capture_output=True, text=True)
    assert result.stdout.startswith("usage: sslsv") and "Traceback" not in result.stderr


def test_multistage_subcommand_parses(monkeypatch):
    args = build_multistage_parser().parse_intermixed_args(
        ["configs/multistage/demo.yml", "workdir=models/ms_try", "--no-progress", "extraction.shard_size=64"])
    assert args.config == "configs/multistage/demo.yml" and args.no_progress
    assert args.overrides == ["workdir=models/ms_try", "extraction.shard_size=64"]

    import sslsv.pseudo_labels.multistage as multistage

    calls = []
    monkeypatch.setattr(multistage, "run_multistage", lambda cfg, progress: calls.append((cfg, progress)))
    assert main(["multistage", str(ROOT / "configs/multistage/demo.yml"), "workdir=models/ms_try",
                 "--no-progress"]) == 0
    cfg, progress = calls[-1]
    assert str(cfg.workdir) == "models/ms_try" and progress is False
    assert main(["multistage", str(ROOT / "configs/multistage/missing.yml")]) == 2


def test_root_wrappers_keep_working():
    for script, name in (("train.py", "train.py"), ("evaluate.py", "evaluate.py")):
        result = subprocess.run([sys.executable, script, "-h"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: {name}"), result.stderr


# ------------------------------------------------------------------------------------------------ run commands


@pytest.fixture(scope="module")
def run(tiny_run, tiny_data):
    return tiny_run, tiny_data


def test_embed_and_score(run, tmp_path, capsys):
    run_dir, data = run
    files = [str(p) for p in sorted((data / "tiny/wav").rglob("*.wav"))[:3]]
    assert embed_main([str(run_dir), *files, "-o", str(tmp_path / "emb.npy"), "--device", "cpu"]) == 0
    emb = np.load(tmp_path / "emb.npy")
    np.testing.assert_allclose(emb, sslsv.load(run_dir).embed(files), atol=1e-6)
    assert (tmp_path / "emb.txt").read_text().split() == files
    capsys.readouterr()
    assert score_main([str(run_dir), files[0], files[1], "--device", "cpu"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(float(emb[0] @ emb[1]), abs=1e-5)
    assert score_main([str(run_dir), files[0], str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav" in capsys.readouterr().err
    assert embed_main([str(tmp_path), files[0], "-o", str(tmp_path / "e.npy")]) == 2


def test_export_and_average(run, tmp_path, capsys):
    run_dir, _ = run
    assert export_main([str(run_dir), "-o", str(tmp_path / "m.onnx")]) == 0
    assert "max |diff|" in capsys.readouterr().out and (tmp_path / "m.onnx").stat().st_size > 10_000
    assert average_main([str(run_dir), "--epochs", "2", "-o", str(tmp_path / "avg.pt")]) == 0
    assert (tmp_path / "avg.pt").is_file()
    assert average_main([str(run_dir), "--last", "50"]) == 2
    assert "fewer than --epochs 50" in capsys.readouterr().err


def test_fuse(run, tmp_path, capsys):
    run_dir, _ = run
    calibration = tmp_path / "cal.txt"
    code = fuse_main([str(run_dir), str(run_dir), "--trials", "tiny/trials.txt", "--calibration-trials",
                      str(calibration), "--make-calibration", "200", "-o", str(tmp_path / "fusion"),
                      "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert len(calibration.read_text().splitlines()) == 200
    out = capsys.readouterr().out
    assert (tmp_path / "fusion/trials.score").is_file() and "Cllr" in out and "fused (calibrated)" in out
    correlation = json.loads((tmp_path / "fusion/trials.json").read_text())["score_correlation"]
    assert correlation[0][1] == pytest.approx(1.0)  # the same run twice: perfectly correlated scores
    assert (tmp_path / "fusion/trials_correlation.png").stat().st_size > 0


def test_prepare_reports_errors(tmp_path, capsys):
    assert prepare_main(["musan", str(tmp_path / "nothing"), "--data-root", str(tmp_path)]) == 2
    assert "missing MUSAN folder" in capsys.readouterr().err
    assert main(["prepare", "musan", str(tmp_path / "nothing"), "--data-root", str(tmp_path)]) == 2


def test_pseudo_label(run, tmp_path, capsys):
    run_dir, _ = run
    out = tmp_path / "labels"
    assert main(["pseudo-label", str(run_dir), "--kmeans", "8", "--ahc", "4", "--ahc-neighbors", "0",
                 "--device", "cpu", "-o", str(out)]) == 0, capsys.readouterr().err
    assert (out / "train.csv").is_file() and "nmi" in json.loads((out / "summary.json").read_text())
    assert "pseudo-labelled manifest" in capsys.readouterr().out


def test_pseudo_label_refuses_more_clusters_than_utterances_before_extraction(run, tmp_path, capsys, monkeypatch):
    import sslsv.pseudo_labels.multistage as multistage

    run_dir, _ = run
    monkeypatch.setattr(multistage, "extract_run", lambda *a, **k: pytest.fail("extracted before the check"))
    assert main(["pseudo-label", str(run_dir), "-o", str(tmp_path / "labels")]) == 2  # default 50 000 clusters
    error = capsys.readouterr().err
    assert "cannot make 50000 k-means clusters" in error and "Traceback" not in error


def test_weights_option_is_one_spelling_with_the_old_flags_still_parsed():
    import argparse

    from sslsv.cli.options import add_weights_option, weights_choice

    parser = argparse.ArgumentParser()
    add_weights_option(parser)
    assert weights_choice(parser.parse_args([])) == (True, False)
    assert weights_choice(parser.parse_args(["--weights", "last"])) == (False, False)
    assert weights_choice(parser.parse_args(["--weights", "best"])) == (True, True)
    assert weights_choice(parser.parse_args(["--last"])) == (False, False)  # older spelling, hidden from -h
    assert "--last" not in parser.format_help() and "--weights" in parser.format_help()


def test_commands_set_the_openmp_wait_policy_before_torch_starts():
    """Every entry point (train.py, evaluate.py, `sslsv ...`) imports sslsv.cli first: it must set the passive
    OpenMP wait policy without importing torch (the runtime reads it once, at start), and keep a user's value."""
    code = ("import os, sys; import sslsv.cli.train; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    first = subprocess.run([sys.executable, "-c", code.replace("import sslsv.cli.train; ", "import sslsv.cli; ")],
                           cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split() == ["PASSIVE", "False"]
    kept = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True, check=True)
    assert kept.stdout.split()[0] == "ACTIVE"
