import torch

from sslsv.training import checkpoint as ckpt


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
    for step in (3, 10, 7):
        ckpt.atomic_save({}, tmp_path / ckpt.checkpoint_name(0, step))
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == [ckpt.checkpoint_name(0, s) for s in (3, 7, 10)]
    ckpt.prune(ckpt.list_checkpoints(tmp_path), keep=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.checkpoint_name(0, 10)]
    paths = []
    for epoch, value in enumerate([1.0, 2.0, 6.0]):
        path = tmp_path / f"weights_e{epoch + 1:04d}.pt"
        torch.save({"w": torch.full((2,), value), "n": torch.tensor(epoch)}, path)
        paths.append(path)
    avg = ckpt.average_state_dicts(paths)
    assert torch.allclose(avg["w"], torch.full((2,), 3.0)) and avg["n"].item() == 2
