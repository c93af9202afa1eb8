"""recipes/: the VoxCeleb recipe and the Slurm template parse (bash -n) and call only sslsv subcommands, sslsv
options and torchrun options that exist; the demo recipe runs on a tiny corpus laid out as the demo corpus: stages
1-2 (shards, SSL training from them), then stage 2 alone again (it reuses the run's config.yml and finds the run
finished).

The whole demo recipe (`bash recipes/voxceleb/run.sh --demo`, stages 0-7) takes minutes on CPU (docs/scaling.md
gives its timing); this test runs the stages that shards change."""
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sslsv.cli import COMMANDS, main as sslsv_main
from tests.tiny_corpus import make_tiny_corpus

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "recipes/voxceleb/run.sh", ROOT / "recipes/slurm/train.sbatch"]


def logical_lines(path: Path) -> list[str]:
    """Lines with backslash continuations joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#")]


def help_text(*words: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        sslsv_main([*words, "-h"])
    return out.getvalue()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    assert shutil.which("bash")
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_scripts_use_existing_commands_and_options():
    calls = []
    for script in SCRIPTS:
        for line in logical_lines(script):
            for match in re.finditer(r'(?:"\$\{sslsv\[@\]\}"|-m sslsv)\s+([a-z-]+)(.*)', line):
                calls.append((script.name, match.group(1), match.group(2)))
    commands = {command for _, command, _ in calls}
    assert {"demo-corpus", "prepare", "shards", "train", "average", "evaluate", "multistage", "export"} <= commands
    helps = {}
    for script, command, rest in calls:
        assert command in COMMANDS, f"{script}: sslsv {command}"
        words = (command, rest.split()[0]) if command == "prepare" else (command,)  # prepare voxceleb|musan|rirs
        if words not in helps:
            helps[words] = help_text(*words)
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert option in helps[words], f"{script}: sslsv {' '.join(words)} {option}"
    # the launcher's options are torchrun's
    from torch.distributed.run import get_args_parser

    torchrun = get_args_parser()._option_string_actions
    launches = 0
    for script in SCRIPTS:
        for line in logical_lines(script):
            for match in re.finditer(r"(?:^|\s)(?:torchrun|-m torch\.distributed\.run)\s(.*?)-m sslsv", line):
                launches += 1
                for option in re.findall(r"(?<![\w-])(--[a-z_-]+)", match.group(1)):
                    assert option in torchrun, f"{script.name}: torchrun {option}"
    assert launches == 2  # run.sh (one node) and train.sbatch (srun, c10d rendezvous)


def test_demo_recipe_data_stages_run_and_rerun(tmp_path):
    root = make_tiny_corpus(tmp_path / "data")
    (root / "demo").symlink_to(root / "tiny")  # demo/train.csv, demo/musan, demo/rirs
    env = {**os.environ, "SSLSV": f"{sys.executable} -m sslsv", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    exp = tmp_path / "exp"

    def stages(first: int, last: int) -> str:
        result = subprocess.run(
            ["bash", "recipes/voxceleb/run.sh", "--demo", "--data", str(root), "--exp", str(exp), "--workers", "1",
             "--stage", str(first), "--stop-stage", str(last), "--override", "features.n_mels=24",
             "--override", "dataset.views=[{count: 2, seconds: 0.5}]"],
            cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout

    out = stages(1, 2)
    assert "1 shards (1 written, 0 kept)" in out and (root / "demo/shards/shard.list").exists()
    assert "finished: 2 epochs" in out and (exp / "ssl/model_avg.pt").exists()
    config = (exp / "ssl/config.yml").read_text()
    assert "shards: demo/shards/shard.list" in config and "manifest: demo/train.csv" in config
    again = stages(2, 2)  # the stage again, alone: it reuses the run's config.yml, the finished run is kept
    assert "stage 1" not in again and "run already finished" in again
