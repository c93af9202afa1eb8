"""The faiss GPU path of the pseudo-label clustering, on CPU through the same API: the GPU branch is taken only
when faiss sees GPUs (one GPU: StandardGpuResources; several: one index sharded across them), and its labels are
the CPU path's (the stand-in "GPU" index is the CPU index, so any difference would come from the branch itself)."""
import faiss
import numpy as np
import pytest

from sslsv.config import ConfigError
from sslsv.pseudo_labels.clustering import ClusteringConfig, cluster, use_gpu
from tests.pseudo_labels.test_clustering import speakers


class Options:
    shard = False


@pytest.fixture
def fake_gpus(monkeypatch):
    """faiss with `count` stand-in GPUs: the moves are recorded and return the CPU index."""
    calls = []

    def install(count: int):
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: count)
        monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "resources", raising=False)
        monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)

        def to_gpu(resources, device, index):
            calls.append(("one", resources, device))
            return index

        def to_all(index, co=None):
            calls.append(("all", co.shard))
            return index

        monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all, raising=False)
        return calls

    return install


CFG = dict(kmeans_clusters=60, num_classes=20, ahc_neighbors=8, max_points_per_centroid=64)


def test_gpu_branch_only_with_gpus_and_same_labels(fake_gpus):
    x, _ = speakers(num_speakers=20, per_speaker=30)
    calls = fake_gpus(0)
    cpu = cluster(x, ClusteringConfig(**CFG))
    assert calls == []  # no GPU: the CPU path, untouched
    with pytest.raises(ConfigError, match="^clustering.gpu: 'yes'"):
        use_gpu("yes")

    fake_gpus(1)
    one = cluster(x, ClusteringConfig(**CFG))
    assert [c[0] for c in calls] == ["one", "one"]  # k-means index and the AHC kNN graph
    assert calls[0][1:] == ("resources", 0)

    calls.clear()
    fake_gpus(4)
    sharded = cluster(x, ClusteringConfig(**CFG))
    assert calls == [("all", True), ("all", True)]  # one index sharded across the GPUs, not replicas
    for result in (one, sharded):
        assert np.array_equal(result.labels, cpu.labels)
        assert np.array_equal(result.kmeans_labels, cpu.kmeans_labels)

    calls.clear()
    cluster(x, ClusteringConfig(**CFG, gpu="no"))  # gpu: no keeps the CPU even with GPUs
    assert calls == []
