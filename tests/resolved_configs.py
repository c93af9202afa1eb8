"""The resolved form of every shipped config, to pin what the experiments are while their files are reorganised.

`tests/fixtures/resolved_configs.json` maps each config path, as users type it (`configs/dino/ecapa.yml`), to:

- a train config: `load_config(path).to_dict()`;
- a multi-stage config (`configs/multistage/*.yml`): its top-level fields, the resolved train config of its SSL
  stage and of every round (config + overrides), and each round's other fields.

tests/test_shipped_configs.py checks that the current files still resolve to the fixture. After a deliberate
change of an experiment, regenerate it and review the diff:

    python -m tests.resolved_configs --write
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "resolved_configs.json"
# folders of configs/ that hold fragments (composed by other files) or multi-stage configs, not train configs
FRAGMENT_DIRS = ("base", "methods", "encoders", "multistage")


def train_config_paths(root: Path = ROOT) -> list[str]:
    """Every config a user can train with `python train.py PATH`, as `configs/<dir>/<name>.yml`."""
    return sorted(str(p.relative_to(root)) for p in (root / "configs").glob("*/*.yml")
                  if p.parent.name not in FRAGMENT_DIRS)


def multistage_config_paths(root: Path = ROOT) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "configs" / "multistage").glob("*.yml"))


def _plain(value):
    """JSON-comparable form (tuples -> lists)."""
    return json.loads(json.dumps(value))


def resolve(path: str, root: Path = ROOT) -> dict:
    """The resolved form of one shipped config (`path` relative to `root`; a round's config paths likewise)."""
    from sslsv.config import load_config

    if Path(path).parent.name != "multistage":
        return _plain(load_config(root / path).to_dict())
    from sslsv.pseudo_labels.multistage import load_multistage_config

    return resolve_multistage(load_multistage_config(root / path), root)


def resolve_multistage(spec, root: Path = ROOT) -> dict:
    """Top-level fields, the SSL stage and every round of a MultistageConfig, with their train configs resolved."""
    from sslsv.config import load_config

    def fields(obj, skip=()) -> dict:
        out = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in skip}
        return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in out.items()}

    out = fields(spec, skip=("ssl", "rounds"))
    out["ssl"] = fields(spec.ssl, skip=("overrides",))
    if spec.ssl.config is not None:
        out["ssl"]["resolved"] = load_config(root / spec.ssl.config, spec.ssl.overrides).to_dict()
    out["rounds"] = []
    for round_spec in spec.rounds:
        out["rounds"].append(fields(round_spec, skip=("overrides",)))
        out["rounds"][-1]["resolved"] = load_config(root / round_spec.config, round_spec.overrides).to_dict()
    return _plain(out)


def resolve_all(root: Path = ROOT) -> dict:
    return {path: resolve(path, root) for path in train_config_paths(root) + multistage_config_paths(root)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {FIXTURE.relative_to(ROOT)}")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose configs/ to resolve")
    parser.add_argument("--out", type=Path, default=FIXTURE, help="where --write writes")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    os.chdir(args.root)  # multi-stage configs name their train configs relative to the working directory
    resolved = resolve_all(args.root.resolve())
    text = json.dumps(resolved, indent=1, sort_keys=True) + "\n"
    if args.write:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {len(resolved)} resolved configs to {out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
