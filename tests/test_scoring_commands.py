"""`sslsv embed` outputs (npz, Kaldi ark/scp, wav.scp input), `sslsv score-trials`, `sslsv metrics` and the
decision of `sslsv score` (fixed threshold, calibration, EER threshold of a trial list)."""
import json
import math
import re

import numpy as np
import pytest

from sslsv.cli import COMMANDS
from sslsv.cli.run_tools import embed_main, score_main
from sslsv.cli.scoring import metrics_main, score_trials_main
from sslsv.evaluation.embedding_io import load_embeddings
from sslsv.evaluation.metrics import compute_eer, compute_min_cllr, compute_min_dcf

pytest.importorskip("kaldiio")


@pytest.fixture(scope="module")
def embedded(tiny_run, tiny_data, tmp_path_factory):
    """The tiny run's embeddings of every utterance of a short trial list (out/trials.txt, 8 utterances, names
    relative to the data root), keyed by the list's names."""
    out = tmp_path_factory.mktemp("embedded")
    names = [f"tiny/wav/id{s:05d}/ses{session}/00000.wav" for s in range(4) for session in range(2)]
    (out / "trials.txt").write_text("".join(f"{int(a[:16] == b[:16])} {a} {b}\n"
                                            for i, a in enumerate(names) for b in names[i + 1:]))
    assert embed_main([str(tiny_run), "--trials", str(out / "trials.txt"), "--audio-root", str(tiny_data),
                       "-o", str(out / "emb.npz"), "--device", "cpu"]) == 0
    return tiny_run, tiny_data, out


def test_commands_are_registered():
    assert COMMANDS["score-trials"][:2] == ("scoring", "score_trials_main")
    assert COMMANDS["metrics"][:2] == ("scoring", "metrics_main")


def test_embed_wav_scp_to_kaldi_matches_npz(embedded, tmp_path, capsys):
    run_dir, data, out = embedded
    stored = load_embeddings(out / "emb.npz")
    names = stored.keys[:2]
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"utt{i} {data / name}\n" for i, name in enumerate(names)))
    assert embed_main([str(run_dir), "--wav-scp", str(scp), "-o", str(tmp_path / "e"), "--format", "kaldi",
                       "--device", "cpu"]) == 0
    assert "e.ark, " in capsys.readouterr().out
    for path in (tmp_path / "e.ark", tmp_path / "e.scp"):
        kaldi = load_embeddings(path)
        assert kaldi.keys == ["utt0", "utt1"]
        np.testing.assert_allclose(kaldi.matrix, stored.matrix[:2], atol=1e-6)
    # an existing output is kept unless --force; piped wav.scp lines are refused; both before the model loads
    assert embed_main([str(run_dir), "--wav-scp", str(scp), "-o", str(tmp_path / "e.scp")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    scp.write_text("utt0 sox a.flac -t wav - |\n")
    assert embed_main([str(run_dir), "--wav-scp", str(scp), "-o", str(tmp_path / "p.ark")]) == 2
    err = capsys.readouterr().err
    assert "line 1: piped command not supported" in err and err.count("\n") == 1
    assert embed_main([str(run_dir), "a.wav", "-o", str(tmp_path / "e.csv")]) == 2
    assert "unknown embedding file type '.csv'" in capsys.readouterr().err


def test_score_trials_and_metrics(embedded, tmp_path, capsys):
    _, data, out = embedded
    trials = out / "trials.txt"
    scores_path = tmp_path / "scores.txt"
    assert score_trials_main([str(out / "emb.npz"), "--trials", str(trials), "-o", str(scores_path)]) == 0
    printed = capsys.readouterr().out
    lines = [line.split() for line in scores_path.read_text().splitlines()]
    assert len(lines) == len(trials.read_text().splitlines())
    stored = load_embeddings(out / "emb.npz")
    row = {k: i for i, k in enumerate(stored.keys)}
    normed = stored.matrix / np.linalg.norm(stored.matrix, axis=1, keepdims=True)
    expected = np.array([normed[row[e]] @ normed[row[t]] for e, t, _, _ in lines])
    scores = np.array([float(s) for _, _, s, _ in lines])
    labels = np.array([int(l) for *_, l in lines])
    np.testing.assert_allclose(scores, expected, atol=2e-6)
    eer = 100 * compute_eer(scores, labels)[0]
    assert f"EER {eer:.2f} %" in printed
    assert score_trials_main([str(out / "emb.npz"), "--trials", str(trials), "-o", str(scores_path)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err

    # utterances without an embedding: refused in one line, or skipped with a warning first
    extra = tmp_path / "extra.txt"
    extra.write_text(trials.read_text() + "1 nowhere/a.wav nowhere/b.wav\n")
    assert score_trials_main([str(out / "emb.npz"), "--trials", str(extra)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 trial utterance(s) have no embedding" in err and "nowhere/a.wav" in err
    assert score_trials_main([str(out / "emb.npz"), "--trials", str(extra), "--skip-missing"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: 2 trial utterance(s)") and f"EER {eer:.2f} %" in captured.out

    # metrics of the score file: the library's numbers, a DET plot, no silent overwrite
    det = tmp_path / "det.png"
    assert metrics_main([str(scores_path), "-o", str(det), "--p-target", "0.05"]) == 0
    printed = capsys.readouterr().out
    assert "layout 'enroll test score label'" in printed and det.stat().st_size > 0
    assert re.search(rf"EER \(%\)\s+{eer:.3f}", printed)
    assert re.search(rf"minDCF0.05\s+{compute_min_dcf(scores, labels, 0.05)[0]:.4f}", printed)
    assert re.search(rf"minCllr\s+{compute_min_cllr(scores, labels):.4f}", printed)
    assert "actDCF0.05" in printed and "minDCF0.01" not in printed and "look like cosines" in printed
    assert metrics_main([str(scores_path), "-o", str(det)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert metrics_main([str(scores_path), "-o", str(det), "--force"]) == 0
    capsys.readouterr()

    # a label-free list gives a label-free score file; its metrics need the labelled list
    free = tmp_path / "free.txt"
    free.write_text("".join(f"{e} {t}\n" for e, t, _, _ in lines))
    assert score_trials_main([str(out / "emb.npz"), "--trials", str(free)]) == 2
    assert "has no labels" in capsys.readouterr().err
    assert score_trials_main([str(out / "emb.npz"), "--trials", str(free), "-o", str(tmp_path / "f.txt")]) == 0
    assert len((tmp_path / "f.txt").read_text().splitlines()[0].split()) == 3
    assert metrics_main([str(tmp_path / "f.txt"), "--no-plot"]) == 2
    assert "give the labelled trial list with --trials" in capsys.readouterr().err
    assert metrics_main([str(tmp_path / "f.txt"), "--no-plot", "--trials", str(trials)]) == 0
    assert re.search(rf"EER \(%\)\s+{eer:.3f}", capsys.readouterr().out)
    # Kaldi compute-eer input: "score target|nontarget"
    kaldi = tmp_path / "kaldi.txt"
    kaldi.write_text("".join(f"{s} {'target' if l == '1' else 'nontarget'}\n" for _, _, s, l in lines))
    assert metrics_main([str(kaldi), "--no-plot"]) == 0
    assert "layout 'score label'" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        metrics_main([str(kaldi), "--no-plot", "--p-target", "1.5"])
    assert exit_.value.code == 2 and "priors must be in (0, 1)" in capsys.readouterr().err


def _decision(text: str) -> tuple[float, str, float, float]:
    score_line, decision = text.strip().splitlines()[-2:]
    match = re.match(r"(same speaker|different speakers): (?:score|LLR) (\S+) (>=|<) threshold (\S+)", decision)
    assert match, decision
    return float(score_line), match.group(1), float(match.group(2)), float(match.group(4))


def test_score_decisions(embedded, tmp_path, capsys, monkeypatch):
    run_dir, data, out = embedded
    files = [str(p) for p in sorted((data / "tiny/wav").rglob("*.wav"))[:2]]
    assert score_main([str(run_dir), *files, "--threshold", "1.5", "--device", "cpu"]) == 0
    score, decision, value, threshold = _decision(capsys.readouterr().out)
    assert (decision, value, threshold) == ("different speakers", score, 1.5)

    # a calibration of this run (sslsv fuse's JSON): LLR = w * score + b against log((1 - P) / P)
    calibration = tmp_path / "cal.json"
    calibration.write_text(json.dumps({"calibration": {"weights": [10.0], "bias": -5.0, "p_target": 0.5},
                                       "runs": ["elsewhere/run"]}))
    assert score_main([str(run_dir), *files, "--calibration", str(calibration), "--p-target", "0.01",
                       "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    score, decision, llr, threshold = _decision(captured.out)
    assert llr == pytest.approx(10 * score - 5, abs=1e-3) and threshold == pytest.approx(math.log(99), abs=1e-4)
    assert decision == ("same speaker" if llr >= threshold else "different speakers")
    assert f"cosine threshold {(math.log(99) + 5) / 10:.4f}" in captured.out
    assert "calibrates elsewhere/run" in captured.err  # another run's calibration: said, not silent
    calibration.write_text(json.dumps({"calibration": {"weights": [1.0, 2.0], "bias": 0.0, "p_target": 0.5}}))
    assert score_main([str(run_dir), *files, "--calibration", str(calibration)]) == 2
    assert "fuses 2 runs" in capsys.readouterr().err

    # the EER threshold of a trial list, scored once with the run (evaluation's scoring, recorded here)
    from sslsv.evaluation import evaluate

    scored = []

    def recording(*args, **kwargs):
        scored.append(real(*args, **kwargs))
        return scored[-1]

    real = evaluate.score_trials
    monkeypatch.setattr(evaluate, "score_trials", recording)
    assert score_main([str(run_dir), *files, "--threshold-from-trials", str(out / "trials.txt"), "--audio-root",
                       str(data), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    score, decision, value, threshold = _decision(text)
    assert "EER threshold of" in text and len(scored) == 1
    assert decision == ("same speaker" if score >= threshold else "different speakers")
    trials, scores = scored[0]
    assert threshold == pytest.approx(compute_eer(scores, trials.labels)[1], abs=1e-6)
    with pytest.raises(SystemExit) as exit_:  # one source of threshold at a time
        score_main([str(run_dir), *files, "--threshold", "0.5", "--calibration", str(calibration)])
    assert exit_.value.code == 2
