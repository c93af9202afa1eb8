"""The shipped configs: every one loads strictly, resolves to the experiment pinned in
tests/fixtures/resolved_configs.json (so reorganising the files changes no experiment), sets no key that changes
nothing, and every registered SSL method ships the three configs of the methods issue (Fast ResNet-34, ECAPA-TDNN
and a demo-sized variant)."""
import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from sslsv import config as C
from sslsv.config import ConfigError, load_config
from sslsv.pseudo_labels.multistage import MultistageConfig, load_multistage_config
from sslsv.registry import METHODS
from tests.resolved_configs import (FIXTURE, ROOT, multistage_config_paths, resolve, resolve_multistage,
                                    train_config_paths)

TRAIN_CONFIGS = train_config_paths()
MULTISTAGE_CONFIGS = multistage_config_paths()
ALL_YAML = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yml"))
EXPECTED = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("path", TRAIN_CONFIGS)
def test_train_config_loads(path):
    config = load_config(ROOT / path)
    assert config.method.name in METHODS
    assert config.run_dir == str(Path("models", *Path(path).with_suffix("").parts[1:]))  # configs/a/b.yml -> models/a/b


@pytest.mark.parametrize("path", MULTISTAGE_CONFIGS)
def test_multistage_config_loads_with_its_round_configs(path):
    spec = load_multistage_config(ROOT / path)
    for index, round_spec in enumerate(spec.rounds):
        assert isinstance(round_spec.overrides, dict), f"{path}: rounds[{index}].overrides: write a mapping"
        config = load_config(ROOT / round_spec.config, round_spec.overrides)
        assert config.method.name == "pseudo_supervised", f"round {index}"


# Registered methods that are a stage of another recipe rather than a framework trained on its own.
STAGE_METHODS = {"pseudo_supervised": "a pseudo-label round (configs/multistage/)",
                 "os_kdft": "distillation from a trained teacher run (configs/os_kdft/)"}


@pytest.mark.parametrize("method", [m for m in METHODS.names() if m not in STAGE_METHODS])
def test_every_method_ships_resnet_ecapa_and_demo_configs(method):
    for name in ("fast_resnet34.yml", "ecapa.yml", "fast_resnet34_demo.yml"):
        path = ROOT / "configs" / method / name
        assert path.exists(), path
        assert load_config(path).method.name == method


# ------------------------------------------------------------------------------------ pinned experiments


def test_every_shipped_config_is_pinned():
    shipped = set(TRAIN_CONFIGS + MULTISTAGE_CONFIGS)
    new, gone = sorted(shipped - set(EXPECTED)), sorted(set(EXPECTED) - shipped)
    assert not new, (f"not pinned in {FIXTURE.name}: {', '.join(new)} (a new experiment? regenerate with "
                     f"`python -m tests.resolved_configs --write` and review the diff)")
    assert not gone, f"pinned but gone (users' command lines would break): {', '.join(gone)}"


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_config_resolves_as_pinned(path):
    if not (ROOT / path).is_file():
        pytest.fail(f"{path}: pinned in {FIXTURE.name} but missing")
    resolved = resolve(path)
    diffs = _diff(EXPECTED[path], resolved)
    assert not diffs, f"{path} resolves differently from {FIXTURE.name}:\n  " + "\n  ".join(diffs[:20])


def _diff(expected, actual, key="") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for k in sorted(set(expected) | set(actual)):
            sub = f"{key}.{k}" if key else k
            if k not in actual:
                out.append(f"{sub}: missing (pinned {expected[k]!r})")
            elif k not in expected:
                out.append(f"{sub}: {actual[k]!r} is not pinned")
            else:
                out += _diff(expected[k], actual[k], sub)
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in _diff(e, a, f"{key}[{i}]")]
    return [] if expected == actual else [f"{key}: {actual!r}, pinned {expected!r}"]


# ------------------------------------------------------------------------------------ no redundant keys


class _NoName(Exception):
    pass


def _own_and_inherited(path: Path) -> tuple[dict, dict]:
    """The file's own keys (YAML aliases unshared) and what its `base:` chain resolves to."""
    own = json.loads(json.dumps(yaml.safe_load(path.read_text()) or {}))
    bases = own.pop("base", None) or []
    inherited: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        inherited = C.merge(inherited, C.read_yaml(path.parent / base))
    return own, inherited


def _leaves(node, key=()) -> list[tuple]:
    """Key paths of the leaves a file sets: mappings are walked, lists are values (except multi-stage rounds)."""
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, key + (k,))]
    if isinstance(node, list) and key == ("rounds",):  # a round repeated (YAML alias `- *round`) is checked once
        return [leaf for i, v in enumerate(node) if v not in node[:i] for leaf in _leaves(v, key + (i,))]
    return [key]


def _without(node, key: tuple):
    node = json.loads(json.dumps(node))
    parents = [node]
    for k in key[:-1]:
        parents.append(parents[-1][k])
    del parents[-1][key[-1]]
    for parent, k in zip(reversed(parents[:-1]), reversed(key[:-1])):  # drop mappings left empty
        if isinstance(parent, dict) and parent[k] == {}:
            del parent[k]
    return node


def _dotted(key: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else k) for i, k in enumerate(key))


def _section(raw: dict, section: str):
    """What one top-level key of a (possibly partial) train config resolves to."""
    if section in C.SPEC_REGISTRIES:
        if section not in raw:
            return None
        if "name" not in raw[section]:
            raise _NoName(section)
        return C._to_plain(C.build_spec(raw[section], section, C.SPEC_REGISTRIES[section]))
    cls = typing.get_type_hints(C.Config).get(section)
    if cls is not None and dataclasses.is_dataclass(cls):
        return C._to_plain(C.from_dict(cls, raw.get(section, {}), f"{section}."))
    return raw.get(section)


def redundant_keys(path: Path, root: Path = ROOT) -> list[str]:
    """The leaf keys of a config file (fragment or not) whose removal changes nothing: each value equals the
    dataclass default or what the file's `base:` chain already sets. Multi-stage files are compared on their fully
    resolved form (every round's train config included)."""
    own, inherited = _own_and_inherited(path)
    multistage = path.parent.name == "multistage"

    def value(data: dict, key: tuple):
        if multistage:
            return resolve_multistage(C.from_dict(MultistageConfig, C.merge(inherited, data), ""))
        return _section(C.merge(inherited, data), key[0])

    problems = []
    for key in _leaves(own):
        name = f"{path.relative_to(root)}: {_dotted(key)}"
        try:
            with_key = value(own, key)
        except _NoName as error:
            problems.append(f"{name}: sets {error}.* options but no {error}.name (here or in its base chain), "
                            f"so what they change cannot be told")
            continue
        try:
            without_key = value(_without(own, key), key)
        except (ConfigError, _NoName, TypeError):
            continue  # needed: the config is incomplete without it
        if with_key == without_key:
            problems.append(f"{name}: redundant (the same value without it: the default or the base chain's)")
    return problems


@pytest.mark.parametrize("path", ALL_YAML)
def test_no_redundant_keys(path):
    problems = redundant_keys(ROOT / path)
    assert not problems, "keys that change nothing (remove them):\n  " + "\n  ".join(problems)


def test_redundant_key_check_names_file_and_key(tmp_path):
    folder = tmp_path / "configs" / "simclr"
    folder.mkdir(parents=True)
    (folder / "x.yml").write_text("base: [" + str(ROOT / "configs/simclr/fast_resnet34.yml") + "]\n"
                                  "trainer: {epochs: 100, lr: 0.5}\nencoder: {pooling: sap}\n")
    problems = redundant_keys(folder / "x.yml", root=tmp_path)
    assert len(problems) == 2, problems
    assert problems[0].startswith("configs/simclr/x.yml: trainer.epochs: redundant")
    assert problems[1].startswith("configs/simclr/x.yml: encoder.pooling: redundant")
