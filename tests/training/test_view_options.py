"""Per-view-group options: `augment: false` views reach the method clean while the other views are augmented
exactly as before (their plans are still drawn); TrainingInfo.recordings numbers (speaker, session) pairs."""
import torch

from sslsv.config import load_config
from sslsv.data.manifest import Manifest
from sslsv.training.trainer import Trainer, recording_ids
from tests.methods.method_helpers import one_thread  # noqa: F401 - tiny models train fastest on one thread
from tests.tiny_corpus import tiny_overrides
from tests.training.test_resume_logs import CONFIG

ONE_STEP = {"trainer.epochs": 1, "trainer.max_steps_per_epoch": 1, "augmentation.strategy": "noise",
            "augmentation.probability": 1.0}


def views_seen(data, run, views: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(the raw crops, the views the method received) of the first training step."""
    trainer = Trainer(load_config(CONFIG, tiny_overrides(data, run, **ONE_STEP, **{"dataset.views": views})))
    raw, seen = [], []
    train_step = trainer.train_step

    def recording_step(batch):
        raw.extend(v.clone() for v in batch["views"])
        return train_step(batch)

    def recording_forward(batch):
        seen.extend(v.clone() for v in batch.views)
        raise KeyboardInterrupt  # stop after the first forward

    trainer.train_step = recording_step
    trainer.method.forward = recording_forward
    try:
        trainer.fit()
    except KeyboardInterrupt:
        pass
    return raw, seen


def test_a_clean_view_group_skips_augmentation_only(tiny_data, tmp_path):
    raw, seen = views_seen(tiny_data, tmp_path / "a", '[{count: 2, seconds: 0.5}, {count: 1, seconds: 0.5, augment: false}]')
    assert torch.equal(seen[2], raw[2]), "the augment: false view must reach the method as read"
    assert not torch.equal(seen[0], raw[0]) and not torch.equal(seen[1], raw[1])
    raw_all, seen_all = views_seen(tiny_data, tmp_path / "b", '[{count: 2, seconds: 0.5}, {count: 1, seconds: 0.5}]')
    # Same crops and, for the augmented views, the same augmentation as when every view is augmented.
    assert all(torch.equal(a, b) for a, b in zip(raw, raw_all))
    assert torch.equal(seen[0], seen_all[0]) and torch.equal(seen[1], seen_all[1])
    assert not torch.equal(seen_all[2], raw_all[2])


def test_recording_ids_number_speaker_session_pairs():
    manifest = Manifest(["a", "b", "c", "d"], ["s1", "s1", "s2", "s2"], ["ses01", "ses02", "ses01", "ses01"], None,
                        "m.csv", None)
    assert recording_ids(manifest).tolist() == [0, 1, 2, 2]
    assert recording_ids(Manifest(["a"], ["s1"], None, None, "m.csv", None)) is None
