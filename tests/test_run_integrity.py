"""Run files: finite-or-nothing saves, a full disk, leftover temporaries, corrupt checkpoints and weights, and
evaluation refusing a config.yml edited after training."""
import errno
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from sslsv import runs
from sslsv.config import load_config, save_config
from sslsv.encoders.base import build_speaker_model
from sslsv.runs import RunError, RunLayout
from tests.tiny_corpus import tiny_overrides

CONFIG = Path(__file__).resolve().parents[1] / "configs/simclr/fast_resnet34.yml"


def _fake_run(root: Path, checkpoint: bool = True) -> RunLayout:
    """A trained-looking run in a second: config.yml, model.pt and (optionally) a checkpoint carrying the config."""
    run = RunLayout(root)
    config = load_config(CONFIG, tiny_overrides(root.parent / "data", root))
    save_config(config, run.config)
    model = build_speaker_model(config.encoder, config.features)
    runs.atomic_save(model.state_dict(), run.model)
    if checkpoint:
        runs.atomic_save({"config": config.to_dict(), "position": {"epoch": 1}}, run.checkpoint(1, 4))
    return run


def _edit_config(run: RunLayout, key: str, value) -> None:
    raw = yaml.safe_load(run.config.read_text())
    section, name = key.split(".")
    raw[section][name] = value
    run.config.write_text(yaml.safe_dump(raw, sort_keys=False))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------------ finite or nothing


def test_non_finite_entries_names_nested_floating_tensors():
    state = {"method": {"encoder.bn1.running_var": torch.tensor([1.0, float("inf")]),
                        "encoder.bn1.num_batches_tracked": torch.tensor(3),
                        "empty": torch.empty(0)},
             "optimizer": {"state": {3: {"exp_avg": torch.tensor([float("nan")]).bfloat16(), "step": 2.0}}},
             "queue": [torch.ones(4), (torch.zeros(2), torch.tensor([float("-inf")]).half())]}
    assert sorted(runs.non_finite_entries(state)) == ["method.encoder.bn1.running_var", "optimizer.state.3.exp_avg",
                                                      "queue.1.1"]
    assert len(runs.non_finite_entries(state, limit=2)) == 2
    assert runs.non_finite_entries({"a": torch.full((3,), 3e38), "b": torch.arange(5)}) == []  # no overflow


def test_non_finite_state_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runs.atomic_save({"w": torch.ones(2)}, path, require_finite=True)
    bad = {"w": torch.ones(2), "method": {"bn.running_var": torch.tensor([float("nan")])}}
    with pytest.raises(RunError, match=r"refusing to write .*checkpoint.pt: non-finite values \(NaN/Inf\) in "
                                       r"method.bn.running_var; the previous checkpoint.pt is untouched"):
        runs.atomic_save(bad, path, require_finite=True)
    assert torch.equal(torch.load(path)["w"], torch.ones(2))
    with pytest.raises(RunError, match="nothing was written"):
        runs.atomic_save(bad, tmp_path / "model.pt", require_finite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_prune_never_deletes_the_newest(tmp_path):
    run = RunLayout(tmp_path)
    for step in (1, 2, 3):
        runs.atomic_save({}, run.checkpoint(0, step))
    runs.prune(run.list_checkpoints(), keep=0)
    assert run.list_checkpoints() == [run.checkpoint(0, 3)]


# ------------------------------------------------------------------------------------------------ disk full, kills


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_names_the_folder_and_space_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    runs.atomic_save({"w": torch.ones(2)}, path)
    real_fdopen = os.fdopen

    def full_disk(fd, mode):  # the temporary file is created, but every write hits a full disk (ENOSPC)
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode)

    monkeypatch.setattr(runs.os, "fdopen", full_disk)
    with pytest.raises(RunError) as caught:
        runs.atomic_save({"w": torch.zeros(500_000)}, path)
    monkeypatch.undo()
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}: disk full while writing model.pt \(2\.0 MB needed, "
                        r"[\d.]+ MB free\); free space or set run_dir elsewhere; the previous model.pt is untouched",
                        str(caught.value))
    assert torch.equal(torch.load(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_disk_full_is_recognised_through_chained_errors():
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    except RuntimeError as error:
        assert runs._is_disk_full(error)
    assert not runs._is_disk_full(RuntimeError("size mismatch"))


def test_leftover_temporaries_are_removed(tmp_path):
    run = RunLayout(tmp_path)
    run.checkpoints.mkdir()
    leftovers = [run.root / ".model.pt.ab12_x9z.tmp", run.checkpoints / ".checkpoint_e0001_s00000010.pt.k3j4h5g6.tmp"]
    keep = [run.root / "notes.tmp", run.root / ".hidden", run.checkpoints / "weights_e0001.pt"]
    for path in leftovers + keep:
        path.write_bytes(b"x")
    assert sorted(runs.remove_stale_temporaries(run.root)) == sorted(leftovers)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in leftovers)


# ------------------------------------------------------------------------------------------------ corrupt files


def test_corrupt_newest_checkpoint_falls_back_to_the_intact_one(tmp_path):
    run = RunLayout(tmp_path)
    for step in (5, 10, 15):
        runs.atomic_save({"step": step}, run.checkpoint(0, step))
    _truncate(run.checkpoint(0, 15))
    run.checkpoint(0, 10).write_bytes(b"")
    warnings = []
    path, state = runs.latest_intact_checkpoint(run, warn=warnings.append)
    assert path == run.checkpoint(0, 5) and state == {"step": 5}
    assert len(warnings) == 2
    assert warnings[0].startswith(f"warning: {run.checkpoint(0, 15)} is unreadable (")
    assert warnings[0].endswith(f"); resuming from {run.checkpoint(0, 5)}") and "\n" not in warnings[0]
    assert runs.latest_intact_checkpoint(RunLayout(tmp_path / "empty")) is None


def test_all_checkpoints_corrupt_is_an_error_naming_them(tmp_path):
    run = RunLayout(tmp_path)
    for step in (5, 10):
        run.checkpoints.mkdir(exist_ok=True)
        run.checkpoint(0, step).write_bytes(b"garbage")
    with pytest.raises(RunError, match=re.escape(str(run.checkpoint(0, 10))) + ".*" +
                       re.escape(str(run.checkpoint(0, 5)))):
        runs.latest_intact_checkpoint(run)


def test_corrupt_weights_file_is_named(tmp_path):
    run = _fake_run(tmp_path / "run")
    _truncate(run.model)
    with pytest.raises(RunError, match=re.escape(f"{run.model} is corrupt or not a weights file (")):
        runs.load_model(run.root)
    runs.atomic_save({"position": {}, "method": {}}, run.model)  # a checkpoint-like dict is not a state dict
    with pytest.raises(RunError, match="not a weights file"):
        runs.load_model(run.root)


def test_broken_run_config_names_file_and_line(tmp_path):
    run = _fake_run(tmp_path / "run")
    run.config.write_text("encoder:\n  name: fast_resnet34\n  channels: [1, 2\nfeatures: {}\n")
    with pytest.raises(RunError, match=re.escape(f"{run.config}: invalid YAML at line 4, column 9: ")) as caught:
        runs.load_run_config(run.root)
    assert "\n" not in str(caught.value)
    run.config.write_text("- a list\n")
    with pytest.raises(RunError, match="is not a run config"):
        runs.load_run_config(run.root)


def test_run_dir_naming_a_file(tmp_path):
    file = tmp_path / "model.pt"
    file.write_bytes(b"x")
    for read in (runs.load_run_config, runs.run_weights, runs.load_model):
        with pytest.raises(RunError, match=f"{re.escape(str(file))} is a file, not a run directory"):
            read(file)


# ------------------------------------------------------------------------------------------------ edited config


def test_config_edited_after_training_is_refused_naming_the_keys(tmp_path):
    run = _fake_run(tmp_path / "run")
    model, config, source = runs.load_model(run.root)
    assert source == str(run.model) and config.encoder.options.embed_dim == 32
    _edit_config(run, "evaluation.batch_seconds", 99.0)  # does not change the model: allowed
    _edit_config(run, "trainer.device", "cpu")
    assert runs.load_model(run.root)[1].evaluation.batch_seconds == 99.0
    _edit_config(run, "encoder.embed_dim", 64)
    _edit_config(run, "features.n_mels", 40)
    with pytest.raises(RunError) as caught:
        runs.load_model(run.root)
    assert str(caught.value) == (
        f"{run.config} was edited after training: encoder.embed_dim 32 (trained) vs 64 (config.yml), "
        f"features.n_mels 24 (trained) vs 40 (config.yml); restore the trained values (stored in "
        f"{run.checkpoint(1, 4)}) or train a new run with the new ones")
    runs.load_model(run.root, random_weights=True)  # the untrained baseline has nothing to compare


def test_corrupt_newest_checkpoint_still_guards_the_config(tmp_path):
    run = _fake_run(tmp_path / "run")
    runs.atomic_save({"config": {}}, run.checkpoint(2, 8))
    _truncate(run.checkpoint(2, 8))
    _edit_config(run, "encoder.embed_dim", 64)
    warnings = []
    with pytest.raises(RunError, match=r"encoder.embed_dim 32 \(trained\) vs 64"):
        runs.check_trained_config(run.root, runs.load_run_config(run.root), warn=warnings.append)
    assert warnings[0].startswith(f"warning: {run.checkpoint(2, 8)} is unreadable") and "comparing" in warnings[0]


def test_without_checkpoints_a_shape_mismatch_names_file_and_shapes(tmp_path):
    run = _fake_run(tmp_path / "run", checkpoint=False)
    _edit_config(run, "encoder.embed_dim", 64)
    with pytest.raises(RunError) as caught:
        runs.load_model(run.root)
    message = str(caught.value)
    assert message.startswith(f"{run.model} does not match the model built from {run.config}: ")
    assert re.search(r"\(32, \d+\) in the file vs \(64, \d+\) in the model", message) and "\n" not in message
