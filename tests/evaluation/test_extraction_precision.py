"""Opt-in precision (evaluation.amp, --amp) and layout (evaluation.channels_last, --channels-last) of embedding
extraction: the default stays float32 in the model's own layout, bf16 and NHWC agree with it, fp16 is refused off
CUDA, the embedding cache and the output names keep the variants apart."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from sslsv.config import ConfigError, EvaluationConfig
from sslsv.evaluation.embeddings import (compiled_for_extraction, embedding_cache, extract_embeddings,
                                         is_channels_last)
from sslsv.evaluation.evaluate import Backends, embed_utterances, evaluate_run, extraction_suffix, with_extraction
from sslsv.runs import RunError, load_model
from tests.evaluation.test_evaluate_backends import write_small_trials

TRIALS = "tiny/small_trials.txt"


@pytest.fixture(scope="module")
def loaded(tiny_run, tiny_data):
    model, config, _ = load_model(tiny_run)  # a tiny Fast ResNet-34 (channels_last declared)
    files = sorted(str(p) for p in (Path(tiny_data) / "tiny" / "wav").rglob("*.wav"))[:6]
    return model, config, files


def _extract(model, files, **kwargs):
    return extract_embeddings(model, files, 16000, "cpu", progress=False, num_workers=0, **kwargs)


def _min_cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()


def test_default_is_float32_unchanged(loaded):
    model, config, files = loaded
    assert config.evaluation.amp == "none" and config.evaluation.channels_last is None
    default = embed_utterances(model, files, config, torch.device("cpu"), Backends(), progress=False)
    explicit = _extract(model, files, amp="none", batch_seconds=config.evaluation.batch_seconds,
                        max_trim=config.evaluation.max_trim)
    assert default.dtype == torch.float32 and torch.equal(default, explicit)
    assert not is_channels_last(model)


def test_bf16_and_channels_last_agree_with_float32(loaded):
    model, config, files = loaded
    cpu = torch.device("cpu")
    fp32 = embed_utterances(model, files, config, cpu, Backends(), progress=False)
    bf16 = embed_utterances(model, files, with_extraction(config, amp="bf16"), cpu, Backends(), progress=False)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert _min_cosine(bf16, fp32) > 0.999
    nhwc = embed_utterances(model, files, with_extraction(config, channels_last=True), cpu, Backends(),
                            progress=False)
    assert _min_cosine(nhwc, fp32) > 0.99999
    assert not is_channels_last(model)  # the layout is restored for whoever uses the model next (training)
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous() for p in weights)


def test_fp16_refused_off_cuda(loaded, tiny_run):
    model, config, files = loaded
    with pytest.raises(ValueError, match="fp16 needs a CUDA device") as error:
        _extract(model, files[:1], amp="fp16")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="amp must be one of"):
        _extract(model, files[:1], amp="fp8")
    with pytest.raises(ConfigError, match="^evaluation.amp: fp16 needs a CUDA evaluation.device"):
        EvaluationConfig(amp="fp16", device="cpu")
    with pytest.raises(ConfigError, match="^evaluation.amp: fp16 needs a CUDA evaluation.device") as error:
        evaluate_run(tiny_run, [TRIALS], device="cpu", amp="fp16", progress=False)  # --device cpu --amp fp16
    assert "\n" not in str(error.value)
    if not torch.cuda.is_available():  # "auto" is known to be a CPU only at run time
        with pytest.raises(RunError, match="^evaluation.amp: amp fp16 needs a CUDA device") as error:
            evaluate_run(tiny_run, [TRIALS], amp="fp16", progress=False)
        assert "\n" not in str(error.value)


def test_cache_keeps_precisions_apart(loaded, tmp_path, capsys):
    model, _, files = loaded
    with embedding_cache(tmp_path):
        fp32 = _extract(model, files)
        bf16 = _extract(model, files, amp="bf16")
        model.to(memory_format=torch.channels_last)
        try:
            nhwc = _extract(model, files)
        finally:
            model.to(memory_format=torch.contiguous_format)
        again = _extract(model, files, amp="bf16")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("embedding cache")]
    assert [line.split(": ")[1].split(" files")[0] for line in lines] == ["0 of 6", "0 of 6", "0 of 6", "6 of 6"]
    keys = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/key.json"))]
    assert len(keys) == 3
    assert {(k.get("amp"), k.get("layout")) for k in keys} == {(None, None), ("bf16", None), (None, "channels_last")}
    assert torch.equal(again, bf16) and not torch.equal(bf16, fp32) and _min_cosine(nhwc, fp32) > 0.99999


def test_outputs_named_apart(tiny_run, tiny_data, tmp_path):
    write_small_trials(tiny_data)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    evaluate_run(run, [TRIALS], device="cpu", progress=False, plots=False)  # fp32 (other tests may have, too)
    for old in run.glob("scores/*_bf16*"):  # a fresh run: no bf16 outputs yet
        old.unlink()
    plain = run / "scores" / "tiny_small_trials.score"
    before = (plain.stat().st_mtime_ns, plain.read_bytes())
    results = evaluate_run(run, [TRIALS], device="cpu", progress=False, amp="bf16", channels_last=True,
                           overwrite=False)
    assert (plain.stat().st_mtime_ns, plain.read_bytes()) == before
    assert {"test/tiny_small_trials", "test/tiny_small_trials_bf16_nhwc"} <= set(results)
    assert (run / "scores" / "tiny_small_trials_bf16_nhwc.score").exists()
    assert (run / "det_tiny_small_trials_bf16_nhwc.png").exists()
    assert abs(results["test/tiny_small_trials_bf16_nhwc"]["eer"] - results["test/tiny_small_trials"]["eer"]) < 20
    with pytest.raises(FileExistsError, match="tiny_small_trials_bf16_nhwc.score exists"):  # --force refusal
        evaluate_run(run, [TRIALS], device="cpu", progress=False, amp="bf16", channels_last=True, overwrite=False)


def test_command_line_flags():
    from sslsv.cli.evaluate import build_parser

    args = build_parser().parse_args(["run", "--amp", "bf16", "--channels-last", "--compile"])
    assert args.amp == "bf16" and args.channels_last is True and args.compile is True
    args = build_parser().parse_args(["run"])
    assert args.amp is None and args.channels_last is None and args.compile is None  # the run's config decides



def test_compiled_extraction_agrees_and_is_keyed_apart(loaded, tmp_path, capsys):
    # evaluation.compile: the encoder under torch.compile with dynamic lengths, the front-end eager
    model, config, files = loaded
    cpu = torch.device("cpu")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with embedding_cache(tmp_path):
        eager = embed_utterances(model, files, config, cpu, Backends(), progress=False)
        compiled = embed_utterances(model, files, with_extraction(config, compile=True), cpu, Backends(),
                                    progress=False)
        again = _extract(model, files, compile=True, batch_seconds=config.evaluation.batch_seconds,
                         max_trim=config.evaluation.max_trim)
    assert _min_cosine(compiled, eager) > 0.99999
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("embedding cache")]
    assert [line.split(": ")[1].split(" files")[0] for line in lines] == ["0 of 6", "0 of 6", "6 of 6"]
    assert torch.equal(again, compiled)  # from the "compiled" entry, not the eager one
    keys = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/key.json"))]
    assert sorted(k.get("compiled", False) for k in keys) == [False, True]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 1
    run = compiled_for_extraction(model)  # a new wrapper, other lengths: torch's compiled code is reused
    with torch.inference_mode():
        for seconds in (1.3, 2.7):
            waves = torch.randn(3, int(seconds * 16000))
            torch.testing.assert_close(run(waves), model(waves), rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert extraction_suffix(with_extraction(config, compile=True), cpu) == "_compiled"
    assert extraction_suffix(with_extraction(config, amp="bf16", compile=True), cpu) == "_bf16_compiled"
