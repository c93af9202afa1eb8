"""SSPS (sslsv/methods/ssps.py): on synthetic representations with known speakers and recordings, pseudo-positives
share the anchor's speaker far more often than chance and come from another recording; SimCLR-SSPS and DINO-SSPS
train, checkpoint their state, and SimCLR-SSPS trains under two gloo ranks with the same queue and clusters on both.
"""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sslsv import distributed
from sslsv.config import ConfigError
from sslsv.methods import ssps as ssps_module
from sslsv.methods.base import Batch
from sslsv.methods.dino import DINO, DINOConfig
from sslsv.methods.simclr import SimCLR, SimCLRConfig
from sslsv.methods.ssps import SSPS, SSPSConfig, draw_ranked
from tests.gloo import free_port
from tests.methods.method_helpers import one_thread, smoke, tiny_info, tiny_speaker_model  # noqa: F401

SPEAKERS, RECORDINGS, UTTERANCES = 8, 4, 6  # per speaker, per recording
N = SPEAKERS * RECORDINGS * UTTERANCES


def _corpus(seed=0, dim=32):
    """Unit representations: speaker direction + a recording offset (the channel) + a little noise. Two recordings
    of one speaker are at cosine ~0.8, two speakers ~0, utterances of one recording ~0.99."""
    g = torch.Generator().manual_seed(seed)
    speaker_dirs = F.normalize(torch.randn(SPEAKERS, dim, generator=g), dim=1)
    recording_offsets = 0.5 * F.normalize(torch.randn(SPEAKERS * RECORDINGS, dim, generator=g), dim=1)
    rows = torch.arange(N)
    recording = rows // UTTERANCES
    speaker = recording // RECORDINGS
    x = speaker_dirs[speaker] + recording_offsets[recording] + 0.03 * torch.randn(N, dim, generator=g)
    return F.normalize(x, dim=1), speaker, recording


def _filled(cfg: SSPSConfig, batch=32):
    """An SSPS that collected one epoch of the synthetic corpus; each queued "positive" is its manifest row, so a
    substituted positive tells which entry was drawn."""
    x, speaker, recording = _corpus()
    ssps = SSPS(cfg, N, recordings=recording)
    ssps.set_epoch(cfg.start_epoch - 1)
    assert ssps.collecting and not ssps.active
    order = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    for start in range(0, N, batch):
        rows = order[start : start + batch]
        ssps.stage(rows, x[rows], [rows[:, None].float()], speaker[rows])
        ssps.commit()
    ssps.set_epoch(cfg.start_epoch)
    return ssps, x, speaker, recording


def _draw(ssps, x, speaker):
    torch.manual_seed(0)
    rows = torch.arange(N)
    (positive,), metrics = ssps.substitute(rows, x, [torch.full((N, 1), -1.0)], speaker)
    return positive[:, 0].long(), metrics


def test_clustering_samples_same_speaker_from_another_recording():
    # K = one cluster per recording; M = 1: the nearest other cluster, i.e. another recording of the same speaker
    cfg = SSPSConfig(enabled=True, start_epoch=1, queue_size=N, clusters=SPEAKERS * RECORDINGS, kmeans_iterations=20,
                     inter_sampling_size=1)
    ssps, x, speaker, recording = _filled(cfg)
    drawn, metrics = _draw(ssps, x, speaker)
    assert (drawn >= 0).all()  # every anchor got a pseudo-positive
    same_speaker = (speaker[drawn] == speaker).float().mean().item()
    same_recording = (recording[drawn] == recording).float().mean().item()
    chance = (RECORDINGS * UTTERANCES - 1) / (N - 1)  # a random other utterance of the same speaker
    assert same_speaker > 0.8 > 5 * chance
    # mostly another recording (kNN sampling below: > 90 % the same one); what is left comes from recordings that
    # k-means split in two (random initial centroids), whose nearest cluster is their other half
    assert same_recording < 0.3
    assert ((speaker[drawn] == speaker) & (recording[drawn] != recording)).float().mean().item() > 0.6
    assert (drawn != torch.arange(N)).all()  # never the anchor's own utterance
    # the logged diagnostics are the same figures
    assert metrics["ssps_coverage"].item() == 1.0
    assert metrics["ssps_speaker_accuracy"].item() == pytest.approx(same_speaker)
    assert metrics["ssps_same_recording"].item() == pytest.approx(same_recording)
    both = ((speaker[drawn] == speaker) & (recording[drawn] != recording)).float().mean().item()
    assert metrics["ssps_accuracy"].item() == pytest.approx(both)


def test_own_cluster_and_knn_modes_find_the_speaker():
    own = SSPSConfig(enabled=True, start_epoch=1, queue_size=N, clusters=SPEAKERS, kmeans_iterations=20)
    ssps, x, speaker, _ = _filled(own)
    drawn, _ = _draw(ssps, x, speaker)
    assert (speaker[drawn] == speaker).float().mean().item() > 0.8
    knn = SSPSConfig(enabled=True, start_epoch=1, sampling="knn", queue_size=N, intra_sampling_size=3)
    ssps, x, speaker, recording = _filled(knn)
    drawn, _ = _draw(ssps, x, speaker)
    assert (speaker[drawn] == speaker).float().mean().item() > 0.95
    assert (recording[drawn] == recording).float().mean().item() > 0.9  # nearest neighbours: same recording
    assert (drawn != torch.arange(N)).all()


def test_centroid_sampling_replaces_positives_by_centroids():
    cfg = SSPSConfig(enabled=True, start_epoch=1, sampling="cluster", clusters=SPEAKERS, kmeans_iterations=20)
    x, speaker, recording = _corpus()
    ssps = SSPS(cfg, N, positive_in_reference_space=True)
    ssps.set_epoch(0)
    ssps.stage(torch.arange(N), x, [x], speaker)
    ssps.commit()
    ssps.set_epoch(1)
    (positive,), metrics = ssps.substitute(torch.arange(N), x, [torch.zeros_like(x)])
    assert metrics["ssps_coverage"].item() == 1.0
    assert (F.cosine_similarity(positive, x) > 0.7).float().mean().item() > 0.9
    with pytest.raises(ConfigError, match="method.ssps.sampling"):
        SSPS(cfg, N, positive_in_reference_space=False)


def test_nothing_changes_before_the_start_epoch_and_kmeans_restarts_from_the_last_centroids(monkeypatch):
    inits = []
    real = ssps_module.spherical_kmeans

    def spy(x, k, iterations, seed, init=None):
        inits.append(init)
        return real(x, k, iterations, seed, init)

    monkeypatch.setattr(ssps_module, "spherical_kmeans", spy)
    cfg = SSPSConfig(enabled=True, start_epoch=2, queue_size=64, clusters=SPEAKERS)
    x, speaker, _ = _corpus()
    ssps = SSPS(cfg, N)
    ssps.set_epoch(0)
    ssps.stage(torch.arange(8), x[:8], [x[:8]], speaker[:8])
    ssps.commit()
    assert ssps.queue_rows is None and not ssps.filled.any()  # epoch 0 < start - 1: nothing collected
    out, metrics = ssps.substitute(torch.arange(8), x[:8], [x[:8]])
    assert out[0] is not None and torch.equal(out[0], x[:8]) and metrics == {}
    ssps, x, speaker, _ = _filled(cfg)
    first = ssps.centroids.clone()
    ssps.set_epoch(2)  # same epoch again (a resume): no second clustering
    ssps.set_epoch(3)
    assert inits[0] is None and len(inits) == 2 and torch.allclose(torch.from_numpy(inits[1]), first, atol=1e-6)


def test_exponential_sampling_prefers_the_closest():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, float("-inf")]]).repeat(2000, 1)
    torch.manual_seed(0)
    uniform = draw_ranked(scores, 10, "uniform", 0.7)
    exp = draw_ranked(scores, 10, "exp", 2.0)
    assert set(uniform.tolist()) == {0, 1, 2, 3}  # never the non-candidate
    assert (exp == 0).float().mean() > 0.8 > (uniform == 0).float().mean() + 0.5
    assert (draw_ranked(scores[:, 4:], 3, "uniform", 1.0) == -1).all()


def _ssps_views(batch, seed):
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(batch, 8000, generator=g) for _ in range(3)]  # 2 training views + the reference crop


def test_simclr_and_dino_train_with_ssps_and_checkpoint_its_state():
    # random waveforms: k-means groups them by step, so the plumbing is tested with kNN (SimCLR) and one cluster (DINO)
    cfg = SSPSConfig(enabled=True, start_epoch=1, queue_size=16, sampling="knn")
    simclr = SimCLR(tiny_speaker_model(), SimCLRConfig(temperature=0.2, ssps=cfg), tiny_info(num_samples=32))
    smoke(simclr, lengths=(0.5, 0.5, 0.5), epoch=0, steps=4)  # collects
    history = smoke(simclr, lengths=(0.5, 0.5, 0.5), epoch=1, steps=2)  # samples
    assert all(h["ssps_coverage"] > 0 for h in history)
    state = simclr.extra_state()
    again = SimCLR(tiny_speaker_model(), SimCLRConfig(temperature=0.2, ssps=cfg), tiny_info(num_samples=32))
    again.load_extra_state(state)
    assert torch.equal(again.ssps.queue_rows, simclr.ssps.queue_rows)
    assert torch.equal(again.ssps.queue_positives, simclr.ssps.queue_positives)
    cfg = SSPSConfig(enabled=True, start_epoch=1, queue_size=16, clusters=1)
    dino = DINO(tiny_speaker_model(), DINOConfig(hidden_dim=8, bottleneck_dim=4, out_dim=16, ssps=cfg),
                tiny_info(num_samples=32))
    smoke(dino, lengths=(0.5, 0.5, 0.25, 0.5), epoch=0, steps=4)
    history = smoke(dino, lengths=(0.5, 0.5, 0.25, 0.5), epoch=1, steps=2)
    assert all(h["ssps_coverage"] > 0 for h in history)
    assert dino.ssps.queue_positives.shape == (2, 16, 16)  # one queue of teacher outputs per global view
    with pytest.raises(ValueError, match="reference crop"):
        simclr(Batch(_ssps_views(4, 0)[:2], torch.zeros(4, dtype=torch.long), torch.arange(4)))
    with pytest.raises(ConfigError, match="method.ssps.sampling"):
        DINO(tiny_speaker_model(), DINOConfig(out_dim=16, ssps=SSPSConfig(enabled=True, sampling="cluster")), tiny_info())


BATCH = 4  # per rank


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cfg = SSPSConfig(enabled=True, start_epoch=1, queue_size=6, clusters=3)
    torch.manual_seed(0)
    method = distributed.convert_batch_norm(
        SimCLR(tiny_speaker_model(), SimCLRConfig(temperature=0.2, ssps=cfg), tiny_info(num_samples=2 * BATCH)),
        torch.device("cpu"))
    params = [p for p in method.parameters() if p.requires_grad]
    coverage = []
    for epoch in range(2):  # epoch 0 collects, epoch 1 samples
        method.on_epoch_start(epoch)
        torch.manual_seed(10 * epoch + rank)
        rows = torch.arange(rank * BATCH, (rank + 1) * BATCH)
        output = method(Batch(_ssps_views(BATCH, 10 * epoch + rank), rows % 2, rows))  # speaker labels: rows mod 2
        for p in params:
            p.grad = None
        output.loss.backward()
        # DDP's gradient averaging, then plain SGD (building DDP or torch.optim imports torch._dynamo: seconds)
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.add_(distributed.all_reduce_mean(p.grad), alpha=-0.01)
        method.after_optimizer_step((epoch + 1) / 2)
        assert math.isfinite(output.loss.item())
        if epoch == 1:
            coverage.append(distributed.all_reduce_mean(output.metrics["ssps_coverage"]).item())
    torch.save({"queue_rows": method.ssps.queue_rows, "queue_positives": method.ssps.queue_positives,
                "assignments": method.ssps.assignments, "coverage": coverage,
                "weights": next(method.encoder.parameters()).detach().clone()}, out.replace(".pt", f"{rank}.pt"))
    dist.barrier()  # nobody tears gloo down while the other rank is still in a collective
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_simclr_ssps_trains_under_two_gloo_ranks(tmp_path):
    out = str(tmp_path / "rank.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=2)
    results = [torch.load(out.replace(".pt", f"{r}.pt")) for r in range(2)]
    for key in ("queue_rows", "queue_positives", "assignments", "weights"):
        assert torch.equal(results[0][key], results[1][key]), key  # every rank holds the same state
    # the queue holds the last 6 of the 8 rows of both ranks; every row of both ranks reached rank 0's bank
    assert sorted(results[0]["queue_rows"].tolist()) == [2, 3, 4, 5, 6, 7]
    assert (results[0]["assignments"] >= 0).sum() == 2 * BATCH
    assert min(results[0]["coverage"]) > 0
