import pytest
import torch

from sslsv import runs as ckpt
from sslsv.runs import RunLayout


def test_atomic_save_keeps_previous_file_when_writing_fails(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.atomic_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    try:
        ckpt.atomic_save({"a": Unpicklable()}, path)
    except RuntimeError:
        pass
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_listing_pruning_and_averaging(tmp_path):
    run = RunLayout(tmp_path)
    for step in (3, 10, 7):
        ckpt.atomic_save({}, run.checkpoint(0, step))
    assert [p.name for p in run.list_checkpoints()] == [run.checkpoint(0, s).name for s in (3, 7, 10)]
    ckpt.prune(run.list_checkpoints(), keep=1)
    assert run.list_checkpoints() == [run.checkpoint(0, 10)]
    paths = []
    for epoch, value in enumerate([1.0, 2.0, 6.0]):
        path = run.epoch_weights(epoch + 1)
        ckpt.atomic_save({"w": torch.full((2,), value), "n": torch.tensor(epoch)}, path)
        paths.append(path)
    assert run.list_epoch_weights() == paths
    avg = ckpt.average_state_dicts(paths)
    assert torch.allclose(avg["w"], torch.full((2,), 3.0)) and avg["n"].item() == 2


def test_run_weights_order_and_errors(tmp_path):
    run = RunLayout(tmp_path / "run")
    with pytest.raises(ckpt.RunError, match="has no weights yet"):
        ckpt.run_weights(run.root)
    with pytest.raises(ckpt.RunError, match="model_best.pt is missing"):
        ckpt.run_weights(run.root, best=True)
    ckpt.atomic_save({}, run.epoch_weights(3))
    assert ckpt.run_weights(run.root) == run.epoch_weights(3)
    ckpt.atomic_save({}, run.model)
    assert ckpt.run_weights(run.root) == run.model
    ckpt.atomic_save({}, run.model_average)
    assert ckpt.run_weights(run.root) == run.model_average
    assert ckpt.run_weights(run.root, use_average=False) == run.model


def test_unreadable_checkpoint_and_broken_config_are_run_errors(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.RunError, match="cannot read checkpoint .*broken.pt"):
        ckpt.load_checkpoint(broken)
    run = RunLayout(tmp_path / "run")
    with pytest.raises(ckpt.RunError, match="is not a run directory"):
        ckpt.load_run_config(run.root)
    run.root.mkdir()
    run.config.write_text("encoder: {name: [unclosed\n")
    with pytest.raises(ckpt.RunError, match="config.yml"):
        ckpt.load_run_config(run.root)
