"""Tar shards (sslsv shards) and the streaming dataset: the file dataset's samples, each once per epoch across
ranks and workers, a bit-identical resume mid-epoch, and a resumable writer that finds corrupted shards."""
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from sslsv.cli import main as cli
from sslsv.audio.augment import AugmentationSources
from sslsv.config import AugmentationConfig, ConfigError, ViewGroup, load_config
from sslsv.data.dataset import EpochBatchSampler, TrainDataset, collate
from sslsv.data.manifest import ManifestError, read_manifest
from sslsv.data.shards import ShardStream, open_shards, shuffle_buffer_order, verify_shards, write_shards
from sslsv.training.trainer import Preempted, Trainer
from tests.gloo import free_port
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"
SHARDS = "tiny/shards/shard.list"


@pytest.fixture(scope="module")
def sharded(tiny_data):
    """The tiny corpus (24 utterances) in 5 shards of at most 5 utterances."""
    write_shards(read_manifest(tiny_data / "tiny/train.csv"), tiny_data, tiny_data / "tiny/shards", 5, workers=1)
    return tiny_data


def test_shard_samples_are_the_file_datasets_samples(sharded):
    """Same views, crops and augmentation plans as the file dataset for the same row, every utterance once."""
    manifest = read_manifest(sharded / "tiny/train.csv")
    views = [ViewGroup(2, 0.5), ViewGroup(1, 0.25)]
    augmentation = AugmentationSources(AugmentationConfig(musan_dir="tiny/musan", rir_dir="tiny/rirs"), sharded, 16000)
    stream = ShardStream(open_shards(sharded / SHARDS, 16000), views, 16000, global_batch=8, seed=3,
                         augmentation=augmentation)
    sampler = EpochBatchSampler(len(manifest), 8, 3)
    files = TrainDataset(manifest, sharded, views, 16000, augmentation)
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        sampler.set_epoch(epoch)
        samples = list(stream)
        # the same number of samples per epoch as the file dataset, each utterance at most once
        assert len(samples) == sampler.steps * 8 == 24
        assert sorted(s["index"] for s in samples) == list(range(24))
        seed = next(iter(sampler))[0][1]
        for sample in samples[:6]:
            expected = files[(sample["index"], seed)]
            assert sample["label"] == expected["label"]
            assert all(np.array_equal(a, b) for a, b in zip(sample["views"], expected["views"]))
            for plan, same in zip(sample["plans"], expected["plans"]):  # the same augmentation draws
                assert plan.keys() == same.keys()
                assert all(np.array_equal(np.asarray(plan[k]), np.asarray(same[k])) for k in plan)


def test_shuffle_buffer_order_is_a_permutation_within_the_buffer():
    order = shuffle_buffer_order(1000, 50, np.random.default_rng(0))
    assert sorted(order) == list(range(1000))
    assert all(order[k] <= k + 50 for k in range(1000))  # nothing is output before it could have been read
    assert not np.array_equal(order, np.arange(1000))


def _rank(rank: int, port: int, data: str, out: str) -> None:
    """One rank: the trainer's shard loader (ShardStream, DataLoader with 2 workers) over 2 epochs; rank 0 saves
    every rank's rows."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    stream = ShardStream(open_shards(f"{data}/{SHARDS}", 16000), [ViewGroup(1, 0.2)], 16000, global_batch=8,
                         seed=0, rank=dist.get_rank(), world_size=dist.get_world_size(), num_workers=2)
    loader = DataLoader(stream, batch_size=stream.local_batch, collate_fn=collate, num_workers=2)
    for epoch in range(2):
        stream.set_epoch(epoch)
        rows = torch.cat([batch["indices"] for batch in loader])
        gathered = [torch.zeros_like(rows) for _ in range(2)]
        dist.all_gather(gathered, rows)
        if rank == 0:
            torch.save(torch.stack(gathered), f"{out}/epoch{epoch}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_ranks_by_two_workers_read_every_sample_once(sharded, tmp_path):
    # fork: the ranks need no fresh interpreter (a spawn re-imports torch and sslsv in each, ~20 s under load)
    mp.start_processes(_rank, args=(free_port(), str(sharded), str(tmp_path)), nprocs=2, start_method="fork")
    epochs = [torch.load(tmp_path / f"epoch{e}.pt") for e in range(2)]
    for rows in epochs:
        assert rows.shape == (2, 12)  # 3 steps x 4 rows per rank: 24, as from files
        assert sorted(rows.flatten().tolist()) == list(range(24))  # no sample twice across ranks and workers
    assert not torch.equal(epochs[0], epochs[1])  # a new order every epoch


def test_resume_mid_epoch_from_shards_is_bit_identical(sharded, tmp_path):
    common = {"dataset.shards": SHARDS, "dataset.num_workers": 2, "trainer.epochs": 1, "trainer.lr": 0.003,
              "trainer.log_every_steps": 10, "dataset.views": "[{count: 2, seconds: 0.3}]"}

    def trainer(run: str) -> Trainer:
        return Trainer(load_config(CONFIG, tiny_overrides(sharded, tmp_path / run, **common)))

    reference = trainer("reference")
    assert reference.steps_per_epoch == 3  # 24 utterances // 8: as from files
    reference.fit()
    stopped = trainer("stopped")
    original = stopped.method.forward

    def forward(batch):  # SIGTERM during global step 2: checkpoint at step 2, mid-epoch 1 (3 steps per epoch)
        if stopped.position.global_step + 1 == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(batch)

    stopped.method.forward = forward
    with pytest.raises(Preempted):
        stopped.fit()
    resumed = trainer("stopped")
    resumed.fit()
    assert resumed.sampler.start_step == 2  # it resumed mid-epoch
    for name in ("model.pt", "model_avg.pt"):
        a, b = torch.load(tmp_path / "reference" / name), torch.load(tmp_path / "stopped" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_writer_resumes_and_rewrites_a_corrupted_shard(tiny_data, tmp_path, capsys):
    manifest = read_manifest(tiny_data / "tiny/train.csv")
    out = tmp_path / "shards"
    first = write_shards(manifest, tiny_data, out, 7, workers=2)
    assert len(first.written) == 4 and verify_shards(out / "shard.list") == []
    sums = (out / "shard_000000.tar").read_bytes()
    # a shard lost to a kill and one corrupted: found, and only they are written again
    (out / "shard_000003.tar").unlink()
    corrupted = bytearray((out / "shard_000001.tar").read_bytes())
    corrupted[2000] ^= 0xFF
    (out / "shard_000001.tar").write_bytes(bytes(corrupted))
    assert [p.split(":")[0] for p in verify_shards(out / "shard.list")] == [str((out / "shard_000001.tar").resolve()),
                                                                            str((out / "shard_000003.tar").resolve())]
    assert cli(["shards", str(tiny_data / "tiny/train.csv"), "--data-root", str(tiny_data), "-o", str(out),
                "--utts-per-shard", "7", "--verify"]) == 2
    again = write_shards(manifest, tiny_data, out, 7, workers=1)
    assert sorted(again.written) == ["shard_000001.tar", "shard_000003.tar"]
    assert again.rewritten == ["shard_000001.tar"] and len(again.kept) == 2
    assert verify_shards(out / "shard.list") == []
    assert (out / "shard_000000.tar").read_bytes() == sums  # deterministic bytes
    # another plan in the same folder is refused
    with pytest.raises(FileExistsError, match="another manifest or other settings"):
        write_shards(manifest, tiny_data, out, 5, workers=1)


def test_config_errors_name_the_key(sharded, tmp_path):
    missing = tiny_overrides(sharded, tmp_path / "run", **{"dataset.shards": "tiny/none/shard.list"})
    with pytest.raises(ManifestError, match=r"^dataset.shards: .*shard.list does not exist"):
        Trainer(load_config(CONFIG, missing))
    supervised = tiny_overrides(sharded, tmp_path / "run", **{"dataset.shards": SHARDS,
                                                              "dataset.positive_sampling": "supervised"})
    with pytest.raises(ConfigError, match="^dataset.positive_sampling: 'supervised'"):
        Trainer(load_config(CONFIG, supervised))
