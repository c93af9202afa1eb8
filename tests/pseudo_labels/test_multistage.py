"""The multi-stage driver on the tiny corpus: one round end to end, the table, resume without redoing steps."""
import json

import numpy as np
from pathlib import Path

import pytest
import yaml

from sslsv.config import ConfigError, dotted_to_mapping
from sslsv.data.manifest import read_manifest
from sslsv.pseudo_labels import multistage
from sslsv.pseudo_labels.multistage import load_multistage_config, run_multistage
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, data_root: Path) -> Path:
    common = {"trainer.epochs": 1, "augmentation.strategy": "none", "evaluation.batch_seconds": 10}
    ssl = tiny_overrides(data_root, tmp_path / "unused", **common)
    labelled = ["method.name=pseudo_supervised", "method.loss_gate=gmm", "method.loss_gate_warmup_epochs=1"]
    labelled += tiny_overrides(data_root, tmp_path / "unused", **{**common, "trainer.epochs": 2})
    spec = {
        "workdir": str(tmp_path / "work"),
        # the former list of "key=value" strings (still accepted) for the SSL stage, a mapping for the round
        "ssl": {"config": str(ROOT / "configs/simclr/fast_resnet34.yml"), "overrides": ssl},
        "trials": ["tiny/trials.txt"],
        "extraction": {"shard_size": 10, "batch_seconds": 10, "num_workers": 0, "device": "cpu"},
        "rounds": [{
            "config": str(ROOT / "configs/supervised/fast_resnet34.yml"),
            "overrides": dotted_to_mapping(labelled),
            "clustering": {"kmeans_clusters": 8, "num_classes": 4, "ahc_neighbors": 4, "max_points_per_centroid": 8},
            "filtering": {"drop_fraction": 0.1, "min_cluster_size": 2},
        }],
    }
    path = tmp_path / "multistage.yml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_one_round_writes_manifest_and_table_then_resumes(tiny_data, tmp_path, monkeypatch, capsys):
    cfg = load_multistage_config(_config(tmp_path, tiny_data))
    rows = run_multistage(cfg, progress=False)
    work = tmp_path / "work"
    assert [r["round"] for r in rows] == [0, 1]
    manifest = read_manifest(work / "round_01" / "train.csv")
    assert len(manifest) == rows[1]["filter_kept"] and len(manifest) < 24  # 10 % dropped at least
    assert all(s.startswith("c") for s in manifest.speakers)
    assert 0 <= rows[1]["nmi"] <= 1 and 0 <= rows[1]["eer"] <= 100
    table = (work / "rounds.md").read_text()
    assert "| round |" in table and "EER" in table and table.count("\n") == 4
    state = json.loads((work / "round_01" / "state.json").read_text())
    assert state["completed"] == ["extract", "cluster", "manifest", "train", "evaluate"]
    assert (work / "round_01" / "run" / "model.pt").exists()
    assert len(list((work / "round_01" / "embeddings").glob("shard_*.npy"))) == 3  # 24 rows / 10
    # a relabel: false round (LMFT) starts from this round's trained classifier: one row per kept class
    head = multistage.previous_classifier(work / "round_01" / "run")
    assert head.shape == (rows[1]["filter_clusters_after"], 32) and np.isfinite(head).all()  # tiny: 32-d

    # An interruption after clustering: training and evaluation are redone, nothing before them.
    state["completed"] = ["extract", "cluster", "manifest"]
    (work / "round_01" / "state.json").write_text(json.dumps(state))
    calls = []
    for name in ("extract_run", "label_step", "train_step", "evaluate_step"):
        original = getattr(multistage, name)
        monkeypatch.setattr(multistage, name, lambda *a, _n=name, _o=original, **k: (calls.append(_n), _o(*a, **k))[1])
    again = run_multistage(cfg, progress=False)
    assert calls == ["train_step", "evaluate_step"]
    assert again[1]["eer"] == pytest.approx(rows[1]["eer"])  # the finished run's checkpoints were reused
    out = capsys.readouterr().out
    assert "| 1 |" in out and "initialised the classifier from class centroids" in out


def test_unknown_key_is_named(tmp_path, tiny_data):
    path = _config(tmp_path, tiny_data)
    spec = yaml.safe_load(path.read_text())
    spec["rounds"][0]["clustering"]["kmeans_cluster"] = 5
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"rounds\[0\]\.clustering\.kmeans_cluster: unknown key; did you mean"):
        load_multistage_config(path)


def test_class_centroids_follow_training_class_order(tmp_path):
    from sslsv.data.manifest import Manifest
    from sslsv.pseudo_labels.multistage import class_centroids

    full = Manifest(files=[f"a/{i}.wav" for i in range(5)], speakers=["s"] * 5, sessions=None, durations=None, path="full.csv")
    x = np.array([[1, 0], [0, 2], [3, 0], [0, 1], [5, 5]], dtype=np.float32)
    # kept rows 3, 0, 1, 2 with classes named as pseudo_manifest names them; row 4 was filtered out
    pseudo = Manifest(files=["a/3.wav", "a/0.wav", "a/1.wav", "a/2.wav"],
                      speakers=["c000007", "c000002", "c000007", "c000002"], sessions=None, durations=None, path="pseudo.csv")
    centroids = class_centroids(x, full, pseudo)
    # class index 0 = "c000002" (sorted names): rows 0 and 2 -> (1, 0); class 1 = "c000007": rows 3 and 1 -> (0, 1)
    assert np.allclose(centroids, [[1, 0], [0, 1]])
    stranger = Manifest(files=["b/9.wav"], speakers=["c000001"], sessions=None, durations=None, path="pseudo.csv")
    with pytest.raises(ConfigError, match="pseudo.csv: 1 files are not in full.csv"):
        class_centroids(x, full, stranger)
