"""Label-efficient fine-tuning on the tiny run: stratified subsets, SSL vs random init, the table, the command."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sslsv.cli import main
from sslsv.data.manifest import read_manifest
from sslsv.runs import RunError
from sslsv.evaluation.finetune import FinetuneRecipe, finetune_run, stratified_subset
from tests.evaluation.test_evaluate_backends import write_small_trials


def test_the_recipe_is_checked_and_capped():
    assert FinetuneRecipe().overrides(1) == ["trainer.freeze_encoder_epochs=0.5", "trainer.encoder_lr_scale=0.03"]
    assert FinetuneRecipe(freeze_epochs=2).overrides(10)[0] == "trainer.freeze_encoder_epochs=2"
    with pytest.raises(RunError, match="classifier-init"):
        FinetuneRecipe(classifier_init="kmeans")


def test_stratified_subset(tiny_data):
    manifest = read_manifest(Path(tiny_data) / "tiny" / "train.csv")  # 4 speakers x 6 utterances
    rows = stratified_subset(manifest, 0.5, seed=3)
    speakers = [manifest.speakers[i] for i in rows]
    assert len(rows) == 12 and all(speakers.count(s) == 3 for s in set(manifest.speakers))
    assert np.array_equal(rows, stratified_subset(manifest, 0.5, seed=3))
    assert not np.array_equal(rows, stratified_subset(manifest, 0.5, seed=4))
    assert len(stratified_subset(manifest, 0.01)) == 4  # at least one utterance per speaker
    assert np.array_equal(stratified_subset(manifest, 1.0), np.arange(24))
    with pytest.raises(ValueError):
        stratified_subset(manifest, 0.0)


def test_finetune_writes_the_table(tiny_run, tiny_data, tmp_path, capsys):
    run = tmp_path / "simclr" / "ssl"
    run.mkdir(parents=True)
    for name in ("config.yml", "model_avg.pt", "model.pt"):
        shutil.copy(tiny_run / name, run / name)
    trials = write_small_trials(tiny_data)
    rows = finetune_run(run, [0.5, 1.0], epochs=1, trials=[trials], overrides=["trainer.max_steps_per_epoch=1", "augmentation.strategy=none"])
    out = run / "finetune"
    table = (out / "table.md").read_text()
    assert table.count("| ssl |") == 2 and table.count("| random |") == 2 and "no fine-tuning" in table
    printed = capsys.readouterr().out
    assert "EER (%)" in table and "minDCF0.01" in table and table in printed + "\n"
    assert [(r["fraction"], r["init"]) for r in rows[1:]] == [(0.5, "ssl"), (0.5, "random"), (1.0, "ssl"), (1.0, "random")]
    assert all(0 <= r["eer"] <= 100 for r in rows) and json.loads((out / "table.json").read_text()) == rows
    subset = read_manifest(out / "frac0.5" / "train.csv")
    assert len(subset) == 12 and len(set(subset.speakers)) == 4
    config = (out / "frac0.5" / "ssl" / "config.yml").read_text()
    assert "name: supervised" in config and str((out / "frac0.5" / "train.csv").resolve()) in config
    # The SSL-initialised runs fine-tune gently (frozen warm-up of half the single epoch, encoder at 0.03 x the head's
    # rate, classifier from the subset's class centroids); the random-init runs train plainly.
    assert "freeze_encoder_epochs: 0.5" in config and "encoder_lr_scale: 0.03" in config
    random_config = (out / "frac0.5" / "random" / "config.yml").read_text()
    assert "freeze_encoder_epochs: 0.0" in random_config and "encoder_lr_scale: 1.0" in random_config
    assert f"{out / 'frac0.5' / 'ssl'}: initialised the classifier from class centroids (4 rows)" in printed
    assert (out / "frac1" / "random" / "model.pt").is_file() and (out / "frac1" / "ssl" / "results.json").is_file()
    # The command is registered and reports user errors without a traceback (before any training).
    assert main(["finetune", str(run), "--fractions", "1.5", "--epochs", "1", "--trials", trials]) == 2
    assert "--fractions must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(RunError, match="fractions"):
        finetune_run(run, [1.5], epochs=1)
