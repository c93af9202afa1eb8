"""`trainer.init_weights` (issue 16, item 1; wespeaker's model_init): a fresh run starts from a run's or a file's
encoder weights, strictly by default, with a report of what a non-strict load left out; a resume ignores it; the
InitialWeights path of finetune and multistage shares the implementation."""
import pytest
import torch

from sslsv.config import ConfigError, load_config
from sslsv.encoders.base import build_speaker_model
from sslsv.training.trainer import InitialWeights, Trainer, TrainingError
from tests.methods.method_helpers import one_thread  # noqa: F401 - tiny models train fastest on one thread
from tests.tiny_corpus import tiny_overrides
from tests.training.test_resume_logs import CONFIG, ROOT

ONE_STEP = {"trainer.epochs": 1, "trainer.max_steps_per_epoch": 1}


def config_for(data, run, config=CONFIG, **extra):
    return load_config(config, tiny_overrides(data, run, **{**ONE_STEP, **extra}))


def other_weights(config) -> dict[str, torch.Tensor]:
    """Weights of the config's embedding model that differ from a fresh run's in every floating tensor."""
    torch.manual_seed(123)
    state = build_speaker_model(config.encoder, config.features).state_dict()
    return {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}


class FirstStep(Exception):
    pass


def weights_at_first_step(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Trains until the first forward pass, before any update; returns a copy of the encoder's tensors there."""
    seen: dict[str, torch.Tensor] = {}

    def first_forward(batch):
        seen.update({k: v.detach().clone() for k, v in trainer.method.encoder.state_dict().items()})
        raise FirstStep

    trainer.method.forward = first_forward
    with pytest.raises(FirstStep):
        trainer.fit()
    return seen


def test_a_run_directory_initialises_the_encoder(tiny_data, tmp_path, capsys):
    source = tmp_path / "source"
    source.mkdir()
    base = config_for(tiny_data, tmp_path / "run")
    weights = other_weights(base)
    torch.save(weights, source / "model_avg.pt")  # a run directory resolves to its averaged weights
    trainer = Trainer(config_for(tiny_data, tmp_path / "run", **{"trainer.init_weights": str(source)}))
    seen = weights_at_first_step(trainer)
    assert set(seen) == set(weights) and all(torch.equal(seen[k], weights[k]) for k in weights)
    assert f"initialised the encoder from {source / 'model_avg.pt'}\n" in capsys.readouterr().out


def mismatched_file(weights: dict, path) -> tuple[str, str, str]:
    """Writes `weights` with one tensor missing, one unexpected and one of another shape; returns their names."""
    names = [k for k, v in weights.items() if v.ndim == 4]
    missing, reshaped = names[0], names[-1]
    broken = {k: v for k, v in weights.items() if k != missing}
    broken[reshaped] = torch.zeros(3, 1, 1, 1)
    broken["projector.extra.weight"] = torch.zeros(2)
    torch.save(broken, path)
    return missing, "projector.extra.weight", reshaped


def test_strict_by_default_names_the_tensors_that_differ(tiny_data, tmp_path):
    config = config_for(tiny_data, tmp_path / "run")
    missing, unexpected, reshaped = mismatched_file(other_weights(config), tmp_path / "w.pt")
    config.trainer.init_weights = str(tmp_path / "w.pt")
    with pytest.raises(TrainingError) as error:
        Trainer(config).fit()
    message = str(error.value)
    assert message.startswith(f"trainer.init_weights: {tmp_path / 'w.pt'} does not match the encoder")
    assert "\n" not in message and "trainer.init_strict: false" in message
    for name in (missing, unexpected, reshaped):
        assert name in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_non_strict_loads_what_matches_and_reports_the_rest(tiny_data, tmp_path, capsys):
    config = config_for(tiny_data, tmp_path / "run", **{"trainer.init_strict": "false"})
    weights = other_weights(config)
    missing, unexpected, reshaped = mismatched_file(weights, tmp_path / "w.pt")
    config.trainer.init_weights = str(tmp_path / "w.pt")
    trainer = Trainer(config)
    fresh = {k: v.clone() for k, v in trainer.method.encoder.state_dict().items()}
    seen = weights_at_first_step(trainer)
    for name in seen:
        expected = fresh[name] if name in (missing, reshaped) else weights[name]
        assert torch.equal(seen[name], expected), name
    out = capsys.readouterr().out
    assert f"{len(fresh) - 2} of {len(fresh)} tensors loaded" in out
    assert f"missing (left as initialised): {missing}" in out and f"unexpected (ignored): {unexpected}" in out
    assert f"shape-mismatched (left as initialised): {reshaped} (3, 1, 1, 1) in the file vs" in out


def test_unusable_sources_are_one_line_errors(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer\.init_weights: .*nowhere\.pt does not exist"):
        Trainer(config_for(tiny_data, tmp_path / "a", **{"trainer.init_weights": str(tmp_path / "nowhere.pt")}))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ConfigError, match=r"^trainer\.init_weights: .*empty_run has no weights yet"):
        Trainer(config_for(tiny_data, tmp_path / "b", **{"trainer.init_weights": str(tmp_path / "empty_run")}))
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    trainer = Trainer(config_for(tiny_data, tmp_path / "c", **{"trainer.init_weights": str(tmp_path / "corrupt.pt")}))
    with pytest.raises(TrainingError, match=r"^trainer\.init_weights: .*corrupt\.pt is corrupt or not a weights file") \
            as error:
        trainer.fit()
    assert "\n" not in str(error.value)


def test_a_resume_ignores_init_weights(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(config_for(tiny_data, run)).fit()
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")  # read, it would fail
    resumed = config_for(tiny_data, run, **{"trainer.epochs": 2, "trainer.init_weights": str(tmp_path / "corrupt.pt")})
    assert Trainer(resumed).fit()["epochs"] == 2
    assert "trainer.init_weights" in capsys.readouterr().out.split("is ignored: the run resumes its checkpoint")[0]


def test_initial_weights_share_the_loader_and_start_the_momentum_teacher(tiny_data, tmp_path):
    config = config_for(tiny_data, tmp_path / "run", ROOT / "configs/byol/fast_resnet34.yml")
    trainer = Trainer(config)
    weights = other_weights(config)
    torch.save(weights, tmp_path / "w.pt")
    trainer._apply_initial_weights(InitialWeights(encoder=tmp_path / "w.pt"))
    (online, teacher), *_ = trainer.method.momentum_pairs()
    assert online is trainer.method.encoder
    for state in (online.state_dict(), teacher.state_dict()):  # theta' = theta: the teacher starts from them too
        assert all(torch.equal(state[k], weights[k]) for k in weights)
    missing, _, _ = mismatched_file(weights, tmp_path / "bad.pt")
    trainer.initial = InitialWeights(encoder=tmp_path / "bad.pt")
    with pytest.raises(TrainingError, match=rf"^cannot initialise .*does not match the encoder \(missing {missing}"):
        trainer._apply_initial_weights(trainer.initial)
    trainer._apply_initial_weights(InitialWeights(encoder=tmp_path / "bad.pt", strict=False))  # loads what matches
