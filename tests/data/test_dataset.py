import numpy as np
import pytest
import soundfile as sf
import torch

from sslsv.config import ViewGroup
from sslsv.data.dataset import EpochBatchSampler, TrainDataset, collate
from sslsv.data.manifest import read_manifest


@pytest.fixture()
def constant_corpus(tmp_path):
    """Each file is a constant signal whose value identifies it, so a crop tells which file it came from."""
    rows = []
    for speaker in range(3):
        for session in range(2):
            for utt in range(2):
                rel = f"wav/s{speaker}/ses{session}/{utt}.wav"
                (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
                value = 0.01 * (1 + len(rows))
                sf.write(tmp_path / rel, np.full(16000, value, dtype=np.float32), 16000)
                rows.append(f"{rel},s{speaker},ses{session}")
    (tmp_path / "train.csv").write_text("File,Speaker,Session\n" + "\n".join(rows) + "\n")
    return tmp_path


def test_multi_crop_views_have_independent_lengths(constant_corpus):
    manifest = read_manifest(constant_corpus / "train.csv")
    groups = [ViewGroup(2, 1.5), ViewGroup(4, 0.25)]  # DINO-style: 2 global, 4 local, any lengths
    dataset = TrainDataset(manifest, constant_corpus, groups, 16000)
    batch = collate([dataset[(row, 7)] for row in range(4)])
    assert [tuple(v.shape) for v in batch["views"]] == [(4, 24000)] * 2 + [(4, 4000)] * 4
    # a 1 s file cropped to 1.5 s is repeated, never padded with zeros or a sentinel
    assert (batch["views"][0] != 0).all()
    assert batch["labels"].tolist() == [0, 0, 0, 0] and batch["indices"].tolist() == [0, 1, 2, 3]


def test_items_are_deterministic_per_key(tiny_data):
    manifest = read_manifest(tiny_data / "tiny/train.csv")
    dataset = TrainDataset(manifest, tiny_data, [ViewGroup(2, 0.5)], 16000)
    a, b, c = dataset[(3, 11)], dataset[(3, 11)], dataset[(3, 12)]
    assert all(np.array_equal(x, y) for x, y in zip(a["views"], b["views"]))
    assert not np.array_equal(a["views"][0], c["views"][0])
    assert not np.array_equal(a["views"][0], a["views"][1])  # two independent crops


def test_supervised_positive_sampling_uses_another_session(constant_corpus):
    manifest = read_manifest(constant_corpus / "train.csv")
    dataset = TrainDataset(manifest, constant_corpus, [ViewGroup(2, 0.5)], 16000, positive_sampling="supervised")
    value_of_row = {row: 0.01 * (1 + row) for row in range(len(manifest))}
    for row in range(len(manifest)):
        item = dataset[(row, row)]
        anchor, positive = item["views"][0][0], item["views"][1][0]
        assert anchor == pytest.approx(value_of_row[row], abs=1e-4)
        source = min(value_of_row, key=lambda r: abs(value_of_row[r] - positive))
        assert manifest.speakers[source] == manifest.speakers[row]
        assert manifest.sessions[source] != manifest.sessions[row]


def test_sampler_shards_global_batches_and_resumes():
    full = EpochBatchSampler(40, 8, seed=3)
    full.set_epoch(2)
    batches = list(full)
    assert len(batches) == 5 and all(len(b) == 8 for b in batches)
    ranks = [EpochBatchSampler(40, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    shards = [list(r) for r in ranks]
    for step, batch in enumerate(batches):
        assert shards[0][step] + shards[1][step] == batch
    resumed = EpochBatchSampler(40, 8, seed=3)
    resumed.set_epoch(2, start_step=3)
    assert list(resumed) == batches[3:]
    other_epoch = EpochBatchSampler(40, 8, seed=3)
    other_epoch.set_epoch(3)
    assert list(other_epoch) != batches
    with pytest.raises(ValueError, match="not divisible"):
        EpochBatchSampler(40, 9, seed=0, world_size=2)


def test_a_file_that_turns_bad_stops_training_with_its_name_and_line(constant_corpus):
    from torch.utils.data import DataLoader

    from sslsv.audio.io import AudioError

    manifest = read_manifest(constant_corpus / "train.csv")
    dataset = TrainDataset(manifest, constant_corpus, [ViewGroup(2, 0.5)], 16000)
    bad = constant_corpus / manifest.files[3]
    poisoned = np.full(16000, 0.05, dtype=np.float32)
    poisoned[::50] = np.nan  # every crop holds NaN
    sf.write(bad, poisoned, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as info:
        dataset[(3, 0)]
    message = str(info.value)
    assert message.startswith(f"{bad}: 160 of 8000 decoded samples are NaN or Inf ({constant_corpus / 'train.csv'}, "
                              f"line 5;")
    assert info.value.kind == "non-finite" and info.value.path == str(bad)
    # read in a DataLoader worker process: the re-raised error is still the one line, no worker traceback
    loader = DataLoader(dataset, batch_size=None, sampler=[(3, 0)], num_workers=1)
    with pytest.raises(AudioError) as info:
        next(iter(loader))
    assert str(info.value) == message
    assert dataset[(2, 0)]["views"][0].shape == (8000,)  # the other files still load
