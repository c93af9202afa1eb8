"""Extraction: shard files, resumption after a lost shard, full-length vs crops, refusal to mix extractions, and
two gloo ranks splitting the shards (torchrun)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sslsv.config import ConfigError
from sslsv.data.manifest import read_manifest
import sslsv.evaluation.embeddings as embeddings
from sslsv.pseudo_labels.extract import ExtractionConfig, extract_representations


class Energy(torch.nn.Module):
    """A deterministic 'model': log energy and mean absolute value of the waveform, (B, S) -> (B, 2)."""

    def forward(self, x):
        return torch.stack([x.pow(2).mean(1).log(), x.abs().mean(1)], dim=1)


def test_shards_resume_and_match(tiny_data, tmp_path, monkeypatch):
    manifest = read_manifest(Path(tiny_data) / "tiny/train.csv")
    cfg = ExtractionConfig(shard_size=7, batch_seconds=5, num_workers=0)
    out = tmp_path / "emb"
    x = extract_representations(Energy(), manifest, tiny_data, out, cfg, 16000, torch.device("cpu"), progress=False)
    assert x.shape == (24, 2) and x.dtype == np.float32
    assert sorted(p.name for p in out.glob("shard_*.npy")) == [f"shard_{i:05d}.npy" for i in range(4)]
    reference = np.array(x)

    # Simulated kill during shard 2: it was never written, and the merged file not yet made.
    (out / "shard_00002.npy").unlink()
    (out / "embeddings.npy").unlink()
    computed = []
    real = embeddings.extract_embeddings

    def counting(model, paths, *args, **kwargs):
        computed.append(len(paths))
        return real(model, paths, *args, **kwargs)

    monkeypatch.setattr(embeddings, "extract_embeddings", counting)
    again = extract_representations(Energy(), manifest, tiny_data, out, cfg, 16000, torch.device("cpu"), progress=False)
    assert computed == [7]  # only the missing shard
    np.testing.assert_allclose(np.array(again), reference, rtol=1e-6)


def test_crops_and_mixing_is_refused(tiny_data, tmp_path):
    manifest = read_manifest(Path(tiny_data) / "tiny/train.csv")
    cfg = ExtractionConfig(shard_size=10, crop_seconds=0.5, crop_batch_size=4, num_workers=0)
    a = extract_representations(Energy(), manifest, tiny_data, tmp_path / "a", cfg, 16000, torch.device("cpu"), False)
    b = extract_representations(Energy(), manifest, tiny_data, tmp_path / "b", cfg, 16000, torch.device("cpu"), False)
    assert np.array_equal(np.array(a), np.array(b))  # deterministic crops
    with pytest.raises(ConfigError, match="another extraction"):
        extract_representations(Energy(), manifest, tiny_data, tmp_path / "a", ExtractionConfig(shard_size=5),
                                16000, torch.device("cpu"), False)


def _sharded_worker(rank: int, port: int, data_root: str, out: str, log: str) -> None:
    """One torchrun-like gloo rank: extracts its shards (rank, rank + W, ...) and records which it computed."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    real = embeddings.extract_embeddings
    computed = []

    def recording(model, paths, *args, **kwargs):
        computed.append([Path(p).name for p in paths])
        return real(model, paths, *args, **kwargs)

    embeddings.extract_embeddings = recording
    manifest = read_manifest(Path(data_root) / "tiny/train.csv")
    cfg = ExtractionConfig(shard_size=7, batch_seconds=5, num_workers=0)
    x = extract_representations(Energy(), manifest, data_root, out, cfg, 16000, torch.device("cpu"), progress=False)
    Path(log.replace(".json", f"{rank}.json")).write_text(json.dumps({"computed": computed, "x": np.array(x).tolist()}))
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_split_the_shards_and_merge_the_same_matrix(tiny_data, tmp_path):
    import socket

    import torch.multiprocessing as mp

    manifest = read_manifest(Path(tiny_data) / "tiny/train.csv")
    cfg = ExtractionConfig(shard_size=7, batch_seconds=5, num_workers=0)
    single = np.array(extract_representations(Energy(), manifest, tiny_data, tmp_path / "one", cfg, 16000,
                                              torch.device("cpu"), progress=False))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = str(tmp_path / "rank.json")
    mp.spawn(_sharded_worker, args=(port, str(tiny_data), str(tmp_path / "two"), log), nprocs=2)
    ranks = [json.loads(Path(log.replace(".json", f"{r}.json")).read_text()) for r in range(2)]
    names = [Path(f).name for f in manifest.files]
    # 24 utterances in shards of 7: rank 0 computes shards 0 and 2, rank 1 shards 1 and 3, nothing twice.
    assert ranks[0]["computed"] == [names[0:7], names[14:21]]
    assert ranks[1]["computed"] == [names[7:14], names[21:24]]
    for rank in ranks:  # both ranks read the merged matrix, equal to one process's
        np.testing.assert_allclose(np.array(rank["x"]), single, rtol=1e-6)


def test_runtime_reaches_the_model_and_meta_and_is_not_mixed(tiny_data, tmp_path, monkeypatch):
    """A bf16 / NHWC / compiled extraction passes amp and compile to extract_embeddings, runs a channels_last model
    NHWC (contiguous again after) and records the setting in meta.json; folders of another setting are refused.
    The default leaves meta.json as before (no runtime keys), so older folders still resume."""
    from sslsv.pseudo_labels.extract import ExtractionRuntime

    class Encoder(torch.nn.Module):
        channels_last = True  # declares NHWC, as Fast ResNet-34 does

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

    class Conv(Energy):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()

        def forward(self, x):
            layouts.append(self.encoder.conv.weight.is_contiguous(memory_format=torch.channels_last))
            return super().forward(x)

    layouts, calls = [], []
    real = embeddings.extract_embeddings

    def recording(model, paths, *args, **kwargs):
        calls.append((kwargs["amp"], kwargs["compile"]))
        return real(model, paths, *args, **{**kwargs, "compile": False})  # compiled code is tested elsewhere

    monkeypatch.setattr(embeddings, "extract_embeddings", recording)
    manifest = read_manifest(Path(tiny_data) / "tiny/train.csv")
    cfg = ExtractionConfig(shard_size=12, batch_seconds=5, num_workers=0)
    model = Conv()
    runtime = ExtractionRuntime("bf16", channels_last=True, compile=True)
    x = extract_representations(model, manifest, tiny_data, tmp_path / "fast", cfg, 16000, torch.device("cpu"),
                                False, runtime=runtime)
    assert x.shape == (24, 2) and calls == [("bf16", True)] * 2 and layouts and all(layouts)
    assert model.encoder.conv.weight.is_contiguous()
    meta = json.loads((tmp_path / "fast/meta.json").read_text())
    assert {k: meta[k] for k in ("amp", "layout", "compiled")} == {"amp": "bf16", "layout": "nhwc", "compiled": True}
    with pytest.raises(ConfigError, match="another extraction"):
        extract_representations(Energy(), manifest, tiny_data, tmp_path / "fast", cfg, 16000, torch.device("cpu"),
                                False)
    extract_representations(Energy(), manifest, tiny_data, tmp_path / "plain", cfg, 16000, torch.device("cpu"), False)
    assert not {"amp", "layout", "compiled"} & set(json.loads((tmp_path / "plain/meta.json").read_text()))
    assert calls[-1] == ("none", False)
    with pytest.raises(ConfigError, match="extraction.amp: must be one of"):
        ExtractionConfig(amp="fp8")


def test_runtime_resolves_from_the_run_and_refuses_fp16_on_cpu(tiny_data):
    from sslsv.config import load_config
    from sslsv.evaluation.evaluate import with_extraction
    from sslsv.pseudo_labels.extract import ExtractionRuntime, resolve_runtime

    plain = load_config(Path(__file__).resolve().parents[2] / "configs/simclr/fast_resnet34_demo.yml")
    run_config = with_extraction(plain, amp="bf16", compile=True)
    cpu = torch.device("cpu")
    assert resolve_runtime(ExtractionConfig(), run_config, Energy(), cpu) == ExtractionRuntime("bf16", False, True)
    assert resolve_runtime(ExtractionConfig(amp="none", compile=False), run_config, Energy(), cpu) == ExtractionRuntime()
    with pytest.raises(ConfigError, match="extraction.amp: amp fp16 needs a CUDA device"):
        resolve_runtime(ExtractionConfig(amp="fp16"), plain, Energy(), cpu)
