"""Stored embeddings (npy + keys, npz, Kaldi ark/scp), label-free trial lists and score-file layouts."""
from pathlib import Path

import numpy as np
import pytest

from sslsv.data.trials import TrialsError
from sslsv.evaluation.embedding_io import (SCORE_LAYOUTS, EmbeddingFileError, embedding_files, label_from_trials,
                                           load_embeddings, read_score_file, read_trial_pairs, save_embeddings,
                                           score_pairs)
from sslsv.evaluation.metrics import compute_eer

KEYS = ["spk1/a.wav", "spk1/b.wav", "spk2/c.wav"]


def _matrix(n=3, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_embedding_file_names():
    assert embedding_files("e.npy") == ("npy", [Path("e.npy"), Path("e.txt")])
    assert [p.name for p in embedding_files("out/e.scp")[1]] == ["e.ark", "e.scp"]
    assert [p.name for p in embedding_files("out/e", "kaldi")[1]] == ["e.ark", "e.scp"]
    assert [p.name for p in embedding_files("e", "npz")[1]] == ["e.npz"]
    with pytest.raises(EmbeddingFileError, match="unknown embedding file type '.csv'"):
        embedding_files("e.csv")
    with pytest.raises(EmbeddingFileError, match="contradicts the format 'kaldi'"):
        embedding_files("e.npy", "kaldi")


@pytest.mark.parametrize("name", ["e.npy", "e.npz", "e.ark", "e.scp"])
def test_round_trip(tmp_path, name):
    if name.endswith(("ark", "scp")):
        pytest.importorskip("kaldiio")
    matrix = _matrix()
    keys = [k.replace("/", "-") for k in KEYS] if name.endswith(("ark", "scp")) else KEYS
    files = save_embeddings(tmp_path / name, keys, matrix)
    assert all(f.is_file() for f in files)
    for path in files if name.endswith(("ark", "scp")) else files[:1]:  # a Kaldi pair reads from either file
        stored = load_embeddings(path)
        assert stored.keys == keys
        np.testing.assert_array_equal(stored.matrix, matrix)
        assert stored.matrix.dtype == np.float32


def test_npy_keys_problems(tmp_path):
    np.save(tmp_path / "e.npy", _matrix())
    with pytest.raises(EmbeddingFileError, match=r"no keys file .*e.txt.*--keys FILE"):
        load_embeddings(tmp_path / "e.npy")
    (tmp_path / "k.txt").write_text("a\nb\n")
    with pytest.raises(EmbeddingFileError, match="3 rows but 2 keys"):
        load_embeddings(tmp_path / "e.npy", tmp_path / "k.txt")
    (tmp_path / "k.txt").write_text("a b\nc\nd\n")  # keys with spaces are fine in a keys file
    assert load_embeddings(tmp_path / "e.npy", tmp_path / "k.txt").keys == ["a b", "c", "d"]
    np.save(tmp_path / "n.npy", np.full((3, 4), np.nan, np.float32))
    (tmp_path / "n.txt").write_text("a\nb\nc\n")
    with pytest.raises(EmbeddingFileError, match="3 of 3 embeddings hold NaN"):
        load_embeddings(tmp_path / "n.npy")
    with pytest.raises(EmbeddingFileError, match="embedding file not found"):
        load_embeddings(tmp_path / "missing.npz")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    (tmp_path / "bad.txt").write_text("a\n")
    with pytest.raises(EmbeddingFileError, match="not a readable npy embedding file"):
        load_embeddings(tmp_path / "bad.npy")


def test_npz_from_other_tools(tmp_path):
    np.savez(tmp_path / "x.npz", keys=np.array(KEYS), xvectors=_matrix())  # one other array: the embeddings
    assert load_embeddings(tmp_path / "x.npz").keys == KEYS
    np.savez(tmp_path / "y.npz", xvectors=_matrix())
    with pytest.raises(EmbeddingFileError, match="no 'keys' array"):
        load_embeddings(tmp_path / "y.npz")


def test_kaldi_keys_and_matrices(tmp_path):
    kaldiio = pytest.importorskip("kaldiio")
    with pytest.raises(EmbeddingFileError, match="Kaldi keys cannot be empty or hold whitespace"):
        save_embeddings(tmp_path / "e.ark", ["a b", "c", "d"], _matrix())
    with pytest.raises(EmbeddingFileError, match="key 'a' given twice"):
        save_embeddings(tmp_path / "e.ark", ["a", "b", "a"], _matrix())
    # (1, D) matrices, as some extractors write vectors, are vectors; (T, D) frame-level features are refused
    kaldiio.save_ark(str(tmp_path / "m.ark"), {"u1": _matrix(1, 4), "u2": _matrix(1, 4, 1)})
    assert load_embeddings(tmp_path / "m.ark").matrix.shape == (2, 4)
    kaldiio.save_ark(str(tmp_path / "f.ark"), {"u1": _matrix(5, 4)})
    with pytest.raises(EmbeddingFileError, match="'u1' is a float32 array of shape \\(5, 4\\), not an embedding"):
        load_embeddings(tmp_path / "f.ark")


def test_score_pairs_and_missing_keys(tmp_path):
    matrix = _matrix()
    save_embeddings(tmp_path / "e.npz", KEYS, matrix)
    stored = load_embeddings(tmp_path / "e.npz")
    scores, kept, missing = score_pairs(stored, KEYS[:2], KEYS[1:])
    normed = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, [normed[0] @ normed[1], normed[1] @ normed[2]], atol=1e-6)
    assert kept.tolist() == [0, 1] and missing == []
    enroll = ["spk1/a.wav", "x1", "x2", "x3", "x4", "spk2/c.wav"]
    test = ["spk1/b.wav", "spk1/b.wav", "x2", "spk1/a.wav", "spk1/a.wav", "spk1/a.wav"]
    with pytest.raises(EmbeddingFileError) as error:
        score_pairs(stored, enroll, test)
    message = str(error.value)
    assert "\n" not in message and "4 trial utterance(s) have no embedding (4 of 6 trials)" in message
    assert "x1, x2, x3;" in message and "x4" not in message and "--skip-missing" in message
    scores, kept, missing = score_pairs(stored, enroll, test, skip_missing=True)
    assert kept.tolist() == [0, 5] and missing == ["x1", "x2", "x3", "x4"] and len(scores) == 2
    with pytest.raises(EmbeddingFileError, match="none of the 1 trials"):
        score_pairs(stored, ["x1"], ["x2"], skip_missing=True)


def test_label_free_and_labelled_trial_lists(tmp_path):
    (tmp_path / "vox.txt").write_text("1 a b\n0 a c\n")
    (tmp_path / "kaldi.txt").write_text("a b target\na c nontarget\n")
    (tmp_path / "free.txt").write_text("a b\n\na c\n")
    (tmp_path / "bad.txt").write_text("a b c d\n")
    for name in ("vox.txt", "kaldi.txt"):
        pairs = read_trial_pairs(tmp_path / name)
        assert (pairs.enroll, pairs.test, pairs.labels.tolist()) == (["a", "a"], ["b", "c"], [1, 0])
    free = read_trial_pairs(tmp_path / "free.txt")
    assert (free.enroll, free.test, free.labels) == (["a", "a"], ["b", "c"], None)
    with pytest.raises(TrialsError, match="line 1: malformed trial"):
        read_trial_pairs(tmp_path / "bad.txt")
    with pytest.raises(TrialsError, match="not found"):
        read_trial_pairs(tmp_path / "none.txt")


def test_score_file_layouts(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(20, int), np.zeros(30, int)]
    scores = labels + rng.standard_normal(50)
    names = [(f"e{i}", f"t{i}") for i in range(50)]
    word = {1: "target", 0: "nontarget"}
    lines = {
        SCORE_LAYOUTS[0]: [f"{e} {t} {s:.6f} {l}" for (e, t), s, l in zip(names, scores, labels)],
        SCORE_LAYOUTS[1]: [f"{l} {e} {t} {s:.6f}" for (e, t), s, l in zip(names, scores, labels)],
        SCORE_LAYOUTS[3]: [f"{s:.6f} {word[l]}" for s, l in zip(scores, labels)],
        SCORE_LAYOUTS[4]: [f"{l}\t{s:.6f}" for s, l in zip(scores, labels)],
    }
    eer = compute_eer(np.round(scores, 6), labels)[0]
    for layout, text in lines.items():
        (tmp_path / "s.txt").write_text("\n".join(text) + "\n")
        table = read_score_file(tmp_path / "s.txt")
        assert table.layout == layout and table.labels.tolist() == labels.tolist()
        assert compute_eer(table.scores, table.labels)[0] == pytest.approx(eer)
    # names with spaces: tab-separated lines
    (tmp_path / "tab.txt").write_text("my a.wav\tmy b.wav\t0.5\t1\nmy a.wav\tc.wav\t0.1\t0\n")
    table = read_score_file(tmp_path / "tab.txt")
    assert table.enroll == ["my a.wav", "my a.wav"] and table.layout == SCORE_LAYOUTS[0]
    # label-free Kaldi scores take their labels from a trial list
    (tmp_path / "free.txt").write_text("".join(f"{e} {t} {s:.6f}\n" for (e, t), s in zip(names, scores)))
    (tmp_path / "trials.txt").write_text("".join(f"{e} {t} {word[l]}\n" for (e, t), l in zip(names, labels)))
    table = read_score_file(tmp_path / "free.txt")
    assert table.layout == SCORE_LAYOUTS[2] and table.labels is None
    labelled = label_from_trials(table, read_trial_pairs(tmp_path / "trials.txt"))
    assert labelled.labels.tolist() == labels.tolist()
    (tmp_path / "short.txt").write_text("e0 t0 target\n")
    with pytest.raises(EmbeddingFileError, match="49 of 50 scored trials are not in .*e1 t1"):
        label_from_trials(table, read_trial_pairs(tmp_path / "short.txt"))


def test_score_file_errors(tmp_path):
    cases = {
        "ambiguous.txt": ("1 0\n0 1\n", "ambiguous layout"),
        "trials.txt": ("1 a b\n0 a c\n", "this is a trial list"),
        "ragged.txt": ("a b 0.5 1\na b 0.5\n", "line 2: 3 fields"),
        "five.txt": ("a b c 0.5 1\n", "line 1: 5 fields"),
        "unknown.txt": ("a b\nc d\n", "2 columns in no known layout"),
        "nan.txt": ("a b nan 1\na c 0.3 0\n", "1 of 2 scores are NaN"),
        "empty.txt": ("\n", "empty score file"),
    }
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(EmbeddingFileError, match=match):
            read_score_file(tmp_path / name)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(EmbeddingFileError, match="not UTF-8"):
        read_score_file(tmp_path / "binary.txt")
