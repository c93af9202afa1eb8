import subprocess
import sys
from pathlib import Path

import pytest

from sslsv.config import ConfigError, default_run_dir, dotted_to_mapping, load_config

ROOT = Path(__file__).resolve().parents[1]
SIMCLR = ROOT / "configs/simclr/fast_resnet34.yml"


def test_inheritance_merges_bases_in_order():
    config = load_config(SIMCLR)
    assert config.method.name == "simclr"
    assert config.method.options.temperature == 0.03
    assert config.dataset.manifest == "voxceleb2/train.csv"  # the default, the base/voxceleb2.yml dataset
    assert config.augmentation.musan_dir == "musan_split"  # from base/voxceleb2.yml
    assert config.trainer.step_gamma == 0.95  # the default: the review's protocol
    demo = load_config(ROOT / "configs/simclr/fast_resnet34_demo.yml")
    assert demo.dataset.manifest == "demo/train.csv" and demo.method.name == "simclr"


def test_dotted_overrides_are_typed():
    config = load_config(SIMCLR, ["trainer.epochs=3", "dataset.batch_size=64", "trainer.grad_clip=3", "encoder.pooling=asp"])
    assert config.trainer.epochs == 3 and config.dataset.batch_size == 64
    assert config.trainer.grad_clip == 3.0 and isinstance(config.trainer.grad_clip, float)
    assert config.encoder.options.pooling == "asp"
    assert load_config(SIMCLR, ["trainer.lr=1e-4"]).trainer.lr == 1e-4  # YAML 1.1 would read a string


def test_typo_names_the_key_and_suggests_the_closest():
    with pytest.raises(ConfigError) as error:
        load_config(SIMCLR, ["trainer.epoch=2"])
    assert "trainer.epoch:" in str(error.value) and "trainer.epochs" in str(error.value)


def test_typo_inside_a_registry_section():
    with pytest.raises(ConfigError) as error:
        load_config(SIMCLR, ["method.temprature=0.1"])
    assert "method.temprature" in str(error.value) and "method.temperature" in str(error.value)


def test_wrong_type_and_bad_literal():
    with pytest.raises(ConfigError, match="trainer.epochs: expected an integer"):
        load_config(SIMCLR, ["trainer.epochs=ten"])
    with pytest.raises(ConfigError, match="did you mean 'sgd'"):
        load_config(SIMCLR, ["trainer.optimizer=sgdd"])


def test_unknown_method_lists_registered_ones():
    with pytest.raises(ConfigError) as error:
        load_config(SIMCLR, ["method.name=simclrr"])
    message = str(error.value)
    assert "method.name" in message and "simclr" in message and "supervised" in message


def test_switching_method_drops_the_previous_options():
    config = load_config(SIMCLR, ["method.name=supervised"])
    assert config.method.name == "supervised" and config.method.options.margin == 0.2


def test_a_section_whose_name_changes_is_replaced_in_files_too(tmp_path):
    (tmp_path / "x.yml").write_text(f"base: [{SIMCLR}]\nmethod: {{name: moco, queue_size: 64}}\n")
    (tmp_path / "y.yml").write_text(f"base: [{tmp_path / 'x.yml'}]\nmethod: {{momentum: 0.99}}\n")
    config = load_config(tmp_path / "y.yml")
    assert config.method.name == "moco" and config.method.options.queue_size == 64
    assert config.method.options.momentum == 0.99  # same name: merged


def test_mapping_overrides_equal_dotted_ones():
    dotted = ["method.name=supervised", "method.margin=0.3", "trainer.epochs=3",
              "dataset.views=[{count: 1, seconds: 3}]"]
    mapping = {"method": {"margin": 0.3, "name": "supervised"}, "trainer": {"epochs": 3},
               "dataset": {"views": [{"count": 1, "seconds": 3}]}}
    assert dotted_to_mapping(dotted) == {"method": {"name": "supervised", "margin": 0.3}, "trainer": {"epochs": 3},
                                         "dataset": {"views": [{"count": 1, "seconds": 3}]}}
    expected = load_config(SIMCLR, dotted).to_dict()
    assert load_config(SIMCLR, mapping).to_dict() == expected  # the name wins wherever it sits in the mapping
    assert load_config(SIMCLR, [mapping]).to_dict() == expected
    assert load_config(SIMCLR, dotted_to_mapping(dotted)).to_dict() == expected


def test_bad_overrides_and_base_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"overrides: expected a mapping of sections .* got str"):
        load_config(SIMCLR, "trainer.epochs=3")
    with pytest.raises(ConfigError, match=r"override 3 must look like key.subkey=value"):
        load_config(SIMCLR, [3])
    with pytest.raises(ConfigError, match=r"trainr: unknown key; did you mean 'trainer'"):
        load_config(SIMCLR, {"trainr": {"epochs": 3}})
    (tmp_path / "a.yml").write_text("base: {file: b.yml}\n")
    with pytest.raises(ConfigError, match=r"a.yml: base: expected a file name or a list of file names"):
        load_config(tmp_path / "a.yml")


def _multistage(tmp_path, overrides) -> Path:
    import yaml

    spec = {"workdir": str(tmp_path / "work"), "ssl": {"run_dir": str(tmp_path / "ssl")},
            "rounds": [{"config": str(ROOT / "configs/supervised/fast_resnet34_demo.yml"), "overrides": overrides}]}
    path = tmp_path / "ms.yml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_multistage_round_overrides_mapping_or_former_list(tmp_path):
    from sslsv.pseudo_labels.multistage import load_multistage_config

    mapping = {"method": {"name": "pseudo_supervised", "loss_gate": "gmm"}, "trainer": {"epochs": 10, "lr": 0.0002}}
    dotted = ["method.name=pseudo_supervised", "method.loss_gate=gmm", "trainer.epochs=10", "trainer.lr=0.0002"]
    resolved = []
    for overrides in (mapping, dotted):
        spec = load_multistage_config(_multistage(tmp_path, overrides)).rounds[0]
        assert spec.overrides == overrides
        resolved.append(load_config(spec.config, spec.overrides).to_dict())
    assert resolved[0] == resolved[1] and resolved[0]["method"]["loss_gate"] == "gmm"
    for bad in ("trainer.epochs=10", 7):
        with pytest.raises(ConfigError, match=r"rounds\[0\]\.overrides: expected a mapping of sections"):
            load_multistage_config(_multistage(tmp_path, bad))
    with pytest.raises(ConfigError, match=r"rounds\[0\]\.overrides: 'epochs' is neither a mapping nor"):
        load_multistage_config(_multistage(tmp_path, ["epochs"]))
    # a bad key inside the overrides stops the driver at load time, naming the file and the round
    with pytest.raises(ConfigError, match=r"ms\.yml: rounds\[0\] .*trainer\.epoch: unknown key; did you mean"):
        load_multistage_config(_multistage(tmp_path, {"trainer": {"epoch": 10}}))


def test_range_check_names_the_key():
    with pytest.raises(ConfigError, match="augmentation.probability"):
        load_config(SIMCLR, ["augmentation.probability=1.5"])


def test_run_dir_follows_the_config_path(tmp_path):
    assert default_run_dir(SIMCLR) == "models/simclr/fast_resnet34"
    assert load_config(SIMCLR, ["run_dir=elsewhere"]).run_dir == "elsewhere"


def test_base_cycle_and_missing_base(tmp_path):
    (tmp_path / "a.yml").write_text("base: b.yml\n")
    (tmp_path / "b.yml").write_text("base: a.yml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yml")
    (tmp_path / "c.yml").write_text("base: nope.yml\n")
    with pytest.raises(ConfigError, match="nope.yml"):
        load_config(tmp_path / "c.yml")


def test_train_cli_reports_typo_without_traceback():
    result = subprocess.run([sys.executable, "train.py", str(SIMCLR), "trainer.epoch=2"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "trainer.epoch" in result.stderr and "trainer.epochs" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_cli_lists_registry():
    result = subprocess.run([sys.executable, "train.py", "--list"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    for name in ("fast_resnet34", "simclr", "supervised", "sap", "vox1_O"):
        assert name in result.stdout


def test_a_nested_section_given_in_part_keeps_the_fields_own_defaults():
    """W-MSE's projector default is 1024-64 (not ProjectorConfig's 512 out): overriding one of its keys keeps the
    others of the method's default, not the section class's."""
    from sslsv.config import load_config

    root = Path(__file__).resolve().parents[1]
    base = load_config(root / "configs/wmse/fast_resnet34.yml").method.options.projector
    changed = load_config(root / "configs/wmse/fast_resnet34.yml", ["method.projector.hidden_dim=256"]).method.options.projector
    assert changed.hidden_dim == 256 and changed.out_dim == base.out_dim == 64
