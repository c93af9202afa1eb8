"""Every command of README.md and docs/*.md parses with the real parsers (tests/doc_commands.py), and a few cheap
ones run as written on the tiny corpus, with the smoke overrides listed in SMOKE."""
import shlex

import pytest

from tests.doc_commands import ROOT, all_commands, check
from tests.evaluation.test_embedding_cache import write_run
from tests.tiny_corpus import make_tiny_corpus

COMMANDS = all_commands()

# (command exactly as a doc writes it, [(text, smoke replacement)]): {run} a random-weights run of the tiny config,
# {data} the tiny corpus's data root, {tmp} a scratch folder. Each runs in-process and must exit 0.
SMOKE = [
    ("python train.py --list", []),
    ("python train.py configs/moco/fast_resnet34.yml --dry-run", []),
    ("python train.py configs/simclr/fast_resnet34.yml trainer.epochs=3 dataset.batch_size=64 trainer.amp=bf16",
     [("trainer.amp=bf16", "trainer.amp=bf16 --dry-run")]),
    ("sslsv check-manifest data/demo/train.csv --data-root data --min-seconds 1",
     [("data/demo/train.csv", "{data}/tiny/train.csv"), ("--data-root data", "--data-root {data}")]),
    ("python evaluate.py models/simclr/fast_resnet34_demo --trials demo --norm asnorm --cohort-size 300 --top-n 100",
     [("models/simclr/fast_resnet34_demo", "{run}"), ("--trials demo", "--trials tiny/trials.txt"),
      ("--cohort-size 300 --top-n 100", "--cohort-size 6 --top-n 3")]),
    ("sslsv embed models/simclr/fast_resnet34_demo --trials demo -o emb/demo.npz",
     [("models/simclr/fast_resnet34_demo", "{run}"), ("--trials demo", "--trials tiny/trials.txt"),
      ("emb/", "{tmp}/")]),
    ("sslsv score-trials emb/demo.npz --trials data/demo/trials.txt -o emb/demo_scores.txt",
     [("emb/", "{tmp}/"), ("data/demo/trials.txt", "{data}/tiny/trials.txt")]),
    ("sslsv metrics models/simclr/fast_resnet34_demo/scores/demo.score --p-target 0.01 0.05 0.1 --no-plot",
     [("models/simclr/fast_resnet34_demo/scores/demo.score", "{run}/scores/tiny_trials_asnorm.score")]),
]


def test_commands_are_extracted():
    texts = {c.text for c in COMMANDS}
    assert len(COMMANDS) > 100 and "make demo" in texts
    missing = [command for command, _ in SMOKE if command not in texts]
    assert not missing, f"SMOKE commands no longer in the docs (update SMOKE): {missing}"


def test_every_doc_command_parses():
    failures = [f"{command} -> {reason}" for command in COMMANDS if (reason := check(command))]
    assert not failures, "commands in the docs that do not parse:\n" + "\n".join(failures)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("doc_commands")
    data = make_tiny_corpus(root / "data", speakers=2, sessions=2, utterances=2)
    return {"run": str(write_run(data, root / "models" / "run")), "data": str(data), "tmp": str(root / "tmp")}


@pytest.mark.parametrize("command,overrides", SMOKE, ids=[c.split(" --")[0][:50] for c, _ in SMOKE])
def test_cheap_commands_run(command, overrides, fixtures, monkeypatch):
    from sslsv.cli import evaluate, main, train

    monkeypatch.chdir(ROOT)
    for text, replacement in overrides:
        assert text in command
        command = command.replace(text, replacement.format(**fixtures))
    words = shlex.split(command)
    if words[0] == "python":
        code = (train if words[1] == "train.py" else evaluate).main(words[2:])
    else:
        code = main(words[1:])
    assert code in (0, None), command
