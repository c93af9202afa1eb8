"""The run-level sub-commands, called as functions: embed, score, export, average, fuse, prepare."""
import json
from pathlib import Path

import numpy as np
import pytest

import sslsv
from sslsv.cli_tools import average_main, embed_main, export_main, fuse_main, prepare_main, score_main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"


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
    assert average_main([str(run_dir), "--last", "2", "-o", str(tmp_path / "avg.pt")]) == 0
    assert (tmp_path / "avg.pt").is_file()
    assert average_main([str(run_dir), "--last", "50"]) == 2
    assert "fewer than --last 50" in capsys.readouterr().err


def test_fuse(run, tmp_path, capsys):
    run_dir, _ = run
    calibration = tmp_path / "cal.txt"
    code = fuse_main([str(run_dir), str(run_dir), "--trials", "tiny/trials.txt", "--calibration-trials",
                      str(calibration), "--make-calibration", "200", "--output", str(tmp_path / "fusion"),
                      "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert len(calibration.read_text().splitlines()) == 200
    out = capsys.readouterr().out
    assert (tmp_path / "fusion/trials.score").is_file() and "Cllr" in out and "fused (calibrated)" in out
    correlation = json.loads((tmp_path / "fusion/trials.json").read_text())["score_correlation"]
    assert correlation[0][1] == pytest.approx(1.0)  # the same run twice: perfectly correlated scores
    assert (tmp_path / "fusion/trials_correlation.png").stat().st_size > 0


def test_prepare_main_reports_errors(tmp_path, capsys):
    assert prepare_main(["musan", str(tmp_path / "nothing"), "--data-root", str(tmp_path)]) == 2
    assert "missing MUSAN folder" in capsys.readouterr().err
