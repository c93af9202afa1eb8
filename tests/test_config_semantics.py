"""Semantic validation of configs (docs/config.md, "Validation"): values out of their range, orderings across keys
and unknown devices are refused with one line naming the dotted key, the value and the accepted range; settings
that do nothing are reported as warnings; every shipped config stays valid and warning-free."""
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sslsv.config import VALIDATION_METRICS, ConfigError, config_warnings, load_config
from tests.resolved_configs import multistage_config_paths, train_config_paths

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs/simclr/fast_resnet34_demo.yml"  # validates on demo_val every 5 epochs, adam, cosine


def _refusal(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(DEMO, overrides)
    return str(error.value)


# (overrides, the key the error names, a fragment of the accepted range it states)
REFUSED = [
    # features
    (["features.sample_rate=0"], "features.sample_rate", "positive"),
    (["features.win_ms=0"], "features.win_ms", "positive"),
    (["features.hop_ms=30"], "features.hop_ms", "(0, features.win_ms = 25]"),  # hop longer than the window
    (["features.hop_ms=0.01"], "features.hop_ms", "at least one sample"),
    (["features.n_fft=256"], "features.n_fft", ">= the window (25 ms = 400 samples"),
    (["features.n_mels=300"], "features.n_mels", "in [1, 257]"),
    (["features.n_mels=0"], "features.n_mels", "in [1, 257]"),
    (["features.f_max=7600", "features.f_min=8000"], "features.f_min", "below features.f_max"),  # f_min > f_max
    (["features.f_min=-1"], "features.f_min", "in [0, 8000)"),
    (["features.f_max=9000"], "features.f_max", "(0, 8000]"),
    (["features.f_max=null", "features.f_min=8000"], "features.f_min", "in [0, 8000)"),
    (["features.preemphasis=1"], "features.preemphasis", "in [0, 1)"),
    # dataset
    (["dataset.views=[{count: 2, seconds: 0}]"], "dataset.views.seconds", "positive"),
    (["dataset.views=[{count: 0, seconds: 2}]"], "dataset.views.count", "at least 1"),
    (["dataset.views=[{count: 2, seconds: 0.01}]"], "dataset.views[0].seconds", "one analysis window"),
    (["dataset.min_seconds=-0.5"], "dataset.min_seconds", ">= 0"),
    (["dataset.batch_size=0"], "dataset.batch_size", "at least 1"),
    (["dataset.num_workers=-1"], "dataset.num_workers", ">= 0"),
    # augmentation
    (["augmentation.probability=1.5"], "augmentation.probability", "in [0, 1]"),
    (["augmentation.snr_noise=[15, 0]"], "augmentation.snr_noise", "low <= high"),
    (["augmentation.snr_music=[5, .inf]"], "augmentation.snr_music", "finite"),
    (["augmentation.babble_speakers=[0, 3]"], "augmentation.babble_speakers", "1 <= low <= high"),
    (["augmentation.rir_max_seconds=0"], "augmentation.rir_max_seconds", "positive"),
    # trainer
    (["trainer.epochs=0"], "trainer.epochs", "at least 1"),
    (["trainer.lr=0"], "trainer.lr", "positive"),
    (["trainer.lr=.nan"], "trainer.lr", "positive"),
    (["trainer.lr=.inf"], "trainer.lr", "finite"),
    (["trainer.min_lr=0.01"], "trainer.min_lr", "[0, trainer.lr = 0.001]"),  # above lr: the rate would rise
    (["trainer.min_lr=-0.0001"], "trainer.min_lr", "[0, trainer.lr"),
    (["trainer.weight_decay=-0.1"], "trainer.weight_decay", ">= 0"),
    (["trainer.sgd_momentum=1"], "trainer.sgd_momentum", "in [0, 1)"),
    (["trainer.optimizer=sgd", "trainer.nesterov=true", "trainer.sgd_momentum=0"], "trainer.sgd_momentum",
     "> 0 with trainer.nesterov"),
    (["trainer.step_epochs=0"], "trainer.step_epochs", "at least 1"),
    (["trainer.step_gamma=0"], "trainer.step_gamma", "in (0, 1]"),
    (["trainer.step_gamma=1.5"], "trainer.step_gamma", "in (0, 1]"),
    (["trainer.warmup_epochs=-1"], "trainer.warmup_epochs", ">= 0"),
    (["trainer.grad_clip=0"], "trainer.grad_clip", "positive or null"),
    (["trainer.seed=-1"], "trainer.seed", "[0, 2**32)"),
    (["trainer.max_steps_per_epoch=0"], "trainer.max_steps_per_epoch", "at least 1 or null"),
    (["trainer.checkpoint_every_steps=-1"], "trainer.checkpoint_every_steps", ">= 0"),
    (["trainer.keep_checkpoints=0"], "trainer.keep_checkpoints", "at least 1"),
    (["trainer.average_last=0"], "trainer.average_last", "at least 1"),
    (["trainer.log_every_steps=0"], "trainer.log_every_steps", "at least 1"),
    (["trainer.validate_every=-1"], "trainer.validate_every", ">= 0"),
    (["trainer.early_stopping_patience=-1"], "trainer.early_stopping_patience", ">= 0"),
    (["trainer.early_stopping_min_delta=-0.1"], "trainer.early_stopping_min_delta", ">= 0"),
    (["trainer.tracked_metric=val/accuracy"], "trainer.tracked_metric", "val/eer, val/min_dcf_001, val/min_dcf_005"),
    # evaluation
    (["evaluation.batch_seconds=0"], "evaluation.batch_seconds", "positive"),
    (["evaluation.max_trim=1"], "evaluation.max_trim", "in [0, 1)"),
    # methods
    (["method.temperature=-0.1"], "method.temperature", "positive"),
    (["method.projector.hidden_dim=0"], "method.projector.hidden_dim", "at least 1"),
    (["method.name=moco", "method.momentum=1.5"], "method.momentum", "[0, 1]"),
    (["method.name=moco", "method.queue_size=0"], "method.queue_size", "at least 1"),
    (["method.name=byol", "method.momentum_start=1.2"], "method.momentum_start", "momentum_end <= 1"),
    (["method.name=byol", "method.predictor_hidden_dim=0"], "method.predictor_hidden_dim", "at least 1"),
    (["method.name=simsiam", "method.predictor_hidden_dim=0"], "method.predictor_hidden_dim", "at least 1"),
    (["method.name=dino", "method.teacher_temperature=0"], "method.teacher_temperature", "positive"),
    (["method.name=dino", "method.out_dim=0"], "method.out_dim", "at least 1"),
    (["method.name=dino", "method.freeze_last_layer_epochs=-1"], "method.freeze_last_layer_epochs", ">= 0"),
    (["method.name=swav", "method.queue_start_epoch=-1"], "method.queue_start_epoch", ">= 0"),
    (["method.name=barlow_twins", "method.scale=-0.005"], "method.scale", ">= 0"),
    (["method.name=vicreg", "method.covariance_weight=-0.1"], "method.covariance_weight", ">= 0"),
    (["method.name=vicreg", "method.invariance_weight=0", "method.variance_weight=0", "method.covariance_weight=0"],
     "method.invariance_weight", "at least one of the three weights"),
    (["method.name=deepcluster", "method.kmeans_iterations=0"], "method.kmeans_iterations", "at least 1"),
    (["method.name=cpc", "method.temperature=0"], "method.temperature", "positive"),
    (["method.name=supervised", "method.scale=0"], "method.scale", "positive"),
    (["method.name=pseudo_supervised", "method.loss_gate_threshold=-1"], "method.loss_gate_threshold", ">= 0"),
    # encoders
    (["encoder.layers=[3, 0, 6, 3]"], "encoder.layers", "at least 1 block per stage"),
    (["encoder.se_reduction=0"], "encoder.se_reduction", "at least 1"),
    (["encoder.name=redimnet", "encoder.heads=0"], "encoder.heads", "at least 1"),
    (["encoder.name=sv_mixer_lap", "encoder.heads=0"], "encoder.heads", "at least 1"),
    (["encoder.name=sv_mixer_unipool", "encoder.dropout=1"], "encoder.dropout", "in [0, 1)"),
]


@pytest.mark.parametrize("overrides, key, accepted", REFUSED, ids=[" ".join(case[0]) for case in REFUSED])
def test_a_value_out_of_range_is_refused_naming_key_value_and_range(overrides, key, accepted):
    message = _refusal(overrides)
    assert message.startswith(f"{key}: "), message
    assert accepted in message, message
    assert "\n" not in message


def test_the_error_states_the_value():
    assert _refusal(["trainer.log_every_steps=0"]) == "trainer.log_every_steps: must be at least 1, got 0"
    assert _refusal(["trainer.min_lr=0.01"]) == ("trainer.min_lr: must be in [0, trainer.lr = 0.001] (the rate would "
                                                 "rise instead of decay), got 0.01")


# The edges of every range are accepted.
ACCEPTED = [
    ["trainer.sgd_momentum=0", "trainer.step_gamma=1", "trainer.min_lr=0.001", "trainer.warmup_epochs=0"],
    ["trainer.max_steps_per_epoch=1", "trainer.checkpoint_every_steps=0", "trainer.log_every_steps=1"],
    ["trainer.checkpoint_every_steps=100000", "trainer.seed=4294967295", "trainer.grad_clip=null"],
    ["features.hop_ms=25", "features.f_min=0", "features.f_max=null", "features.n_mels=257"],
    ["features.n_fft=400", "dataset.views=[{count: 1, seconds: 0.025}]", "dataset.min_seconds=0"],
    ["augmentation.snr_noise=[-5, -5]", "augmentation.babble_speakers=[1, 1]", "evaluation.max_trim=0"],
    ["trainer.tracked_metric=val/anything", "trainer.validate_every=0"],  # not checked while validation is off
    ["method.name=moco", "method.momentum=1", "method.queue_size=1"],
    ["method.name=vicreg", "method.invariance_weight=0", "method.covariance_weight=0"],
]


@pytest.mark.parametrize("overrides", ACCEPTED, ids=[" ".join(case) for case in ACCEPTED])
def test_the_edges_of_each_range_load(overrides):
    load_config(DEMO, overrides)


@pytest.mark.parametrize("section", ["trainer", "evaluation"])
def test_an_unknown_device_is_refused_by_name(section):
    assert _refusal([f"{section}.device=tpu"]) == \
        f"{section}.device: unknown device 'tpu' (use auto, cpu, cuda or cuda:N)"
    assert _refusal([f"{section}.device=meta"]).startswith(f"{section}.device: unsupported device 'meta'")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_known_devices_load_without_the_hardware(device):
    """The spelling is checked; whether the device exists is checked when a run uses it (resolve_device)."""
    config = load_config(DEMO, [f"trainer.device={device}", f"evaluation.device={device}"])
    assert config.trainer.device == config.evaluation.device == device


def test_tracked_metric_names_are_those_of_the_validator(monkeypatch):
    from sslsv.evaluation import validation

    scores = SimpleNamespace(eer=1.0, min_dcf_001=0.5, min_dcf_005=0.25)
    monkeypatch.setattr(validation, "evaluate_model", lambda *args, **kwargs: scores)
    monkeypatch.setattr(validation, "check_trials", lambda *args, **kwargs: None)  # no demo corpus needed
    metrics = validation.trial_validator(load_config(DEMO, ["trainer.device=cpu"]))(None)
    assert sorted(metrics) == sorted(VALIDATION_METRICS)
    for name in VALIDATION_METRICS:
        assert load_config(DEMO, [f"trainer.tracked_metric={name}"]).trainer.tracked_metric == name


def test_run_dir_naming_a_file_is_refused(tmp_path):
    a_file = tmp_path / "model.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as error:
        load_config(DEMO, [f"run_dir={a_file}"])
    assert str(error.value) == f"run_dir: {a_file} is a file, not a directory"
    assert load_config(DEMO, [f"run_dir={tmp_path}"]).run_dir == str(tmp_path)  # an existing folder: resumed
    assert load_config(DEMO, [f"run_dir={tmp_path / 'new'}"]).run_dir == str(tmp_path / "new")


# ------------------------------------------------------------------------------------------------ warnings

# (overrides, the keys the warnings name); DEMO itself validates (validate_every 5 on demo_val) with adam + cosine
WARNED = [
    (["trainer.early_stopping_patience=3", "trainer.validate_every=0"], "trainer.early_stopping_patience"),
    (["trainer.early_stopping_patience=3", "trainer.validation_trials=null"],
     "trainer.validate_every, trainer.early_stopping_patience"),
    (["trainer.validation_trials=null"], "trainer.validate_every"),
    (["trainer.nesterov=true"], "trainer.nesterov"),
    (["trainer.optimizer=adamw", "trainer.nesterov=true"], "trainer.nesterov"),
    (["trainer.sgd_momentum=0.5"], "trainer.sgd_momentum"),
    (["trainer.warmup_epochs=10"], "trainer.warmup_epochs"),  # DEMO: 10 epochs
    (["trainer.schedule=step"], "trainer.min_lr"),  # DEMO's min_lr 0.0001: only cosine schedules end there
    (["trainer.tracked_mode=max"], "trainer.tracked_mode"),
    (["trainer.decay_norm_and_bias=true"], "trainer.decay_norm_and_bias"),
]


@pytest.mark.parametrize("overrides, keys", WARNED, ids=[" ".join(case[0]) for case in WARNED])
def test_a_setting_that_does_nothing_is_warned_about(overrides, keys):
    warnings = config_warnings(load_config(DEMO, overrides))
    assert ", ".join(w.split(":")[0] for w in warnings) == keys, warnings


NOT_WARNED = [
    [],
    ["trainer.optimizer=sgd", "trainer.nesterov=true", "trainer.sgd_momentum=0.5"],
    ["trainer.warmup_epochs=9.5"],
    ["trainer.checkpoint_every_steps=100000"],  # longer than an epoch: a checkpoint at each epoch's end anyway
    ["trainer.validate_every=0"],  # validation_trials kept, validation switched off: the usual way to disable it
    ["trainer.tracked_mode=max", "trainer.validate_every=0"],
    ["trainer.decay_norm_and_bias=true", "trainer.weight_decay=0.01"],
]


@pytest.mark.parametrize("overrides", NOT_WARNED, ids=[" ".join(case) or "demo" for case in NOT_WARNED])
def test_sound_settings_give_no_warning(overrides):
    assert config_warnings(load_config(DEMO, overrides)) == []


def test_warnings_are_printed_once_on_stderr_by_the_first_process(capsys, monkeypatch):
    overrides = ["trainer.sgd_momentum=0.123"]  # a message no other test prints (printed once per process)
    load_config(DEMO, overrides)
    load_config(DEMO, overrides)
    err = capsys.readouterr().err
    assert err == "warning: trainer.sgd_momentum: 0.123 is ignored by optimizer 'adam' (only sgd uses it)\n"
    monkeypatch.setenv("RANK", "1")
    load_config(DEMO, ["trainer.sgd_momentum=0.456"])
    assert capsys.readouterr().err == ""


def test_dry_run_shows_the_warnings():
    result = subprocess.run([sys.executable, "train.py", str(DEMO), "trainer.nesterov=true", "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "warning: trainer.nesterov: ignored by optimizer 'adam' (only sgd has Nesterov momentum)\n"
    assert "nesterov: true" in result.stdout


# ------------------------------------------------------------------------------------------------ shipped configs


@pytest.mark.parametrize("path", train_config_paths())
def test_shipped_train_config_is_valid_without_warnings(path):
    assert config_warnings(load_config(ROOT / path)) == []


@pytest.mark.parametrize("path", multistage_config_paths())
def test_shipped_multistage_stages_are_valid_without_warnings(path, monkeypatch):
    from sslsv.pseudo_labels.multistage import load_multistage_config

    monkeypatch.chdir(ROOT)  # multi-stage configs name their train configs relative to the working directory
    spec = load_multistage_config(ROOT / path)
    stages = ([(spec.ssl.config, spec.ssl.overrides)] if spec.ssl.config else []) + \
        [(r.config, r.overrides) for r in spec.rounds]
    for config, overrides in stages:
        assert config_warnings(load_config(config, overrides)) == [], (path, config)
