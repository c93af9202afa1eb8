"""Every shell command of README.md and docs/*.md, extracted, and checked against the real argument parsers.

    python -m tests.doc_commands            # list every command with its file:line and whether it parses
    python -m tests.doc_commands --failing  # only the ones that do not parse (exit 1 if any)

A command is a line of a fenced block (```bash, ```sh, ```console, ```shell or unlabelled) or an inline `code` span
that starts with `sslsv `, `python `, `torchrun `, `make ` or `tensorboard ` (a leading `$ ` is dropped, lines ending
in a backslash are joined, a trailing `# comment` is removed). Checking parses, never runs:

* `sslsv SUB ...`, `python train.py|evaluate.py ...` and `torchrun ... train.py ...`: the subcommand's own parser
  (argparse) reads the arguments; an unknown option, a missing required one or an invalid choice fails. A train.py
  config that exists in the checkout is also loaded with the command's key=value overrides (sslsv.config), so a
  misspelt key in the docs fails too.
* `python benchmarks/X.py ...`: the script's `main(argv)` parser, likewise (the script is imported, not run).
* `make TARGET`: the target exists in the Makefile.
* anything else (`python -c`, `python -m`, `tensorboard`): listed, not checked.

tests/test_doc_commands.py runs this check and a few commands for real on the tiny corpus (SMOKE there).
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = ("sslsv ", "python ", "torchrun ", "make ", "tensorboard ")
FENCE = re.compile(r"^\s*```\s*(\w*)")
SHELL_FENCES = {"", "bash", "sh", "console", "shell"}
INLINE = re.compile(r"`([^`\n]+)`")


@dataclass(frozen=True)
class DocCommand:
    file: str  # relative to the repository root
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a # after whitespace, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


def _command(text: str) -> str | None:
    text = text.strip()
    if text.startswith("$ "):
        text = text[2:].strip()
    return text if text.startswith(PREFIXES) else None


def _invocation(text: str) -> bool:
    """Whether an inline span is a command to run rather than a name (`sslsv fuse`), an option (`sslsv evaluate
    --top-n`) or a usage line (`sslsv diagnostics RUN [-o PNG]`): it has an argument after the program or
    subcommand, and no [ ], ... or upper-case placeholder (RUN, DIR, N)."""
    words = text.split()
    program = 2 if words[0] in ("sslsv", "make", "tensorboard") else 1
    if words[0] == "python" and len(words) > 1 and words[1] == "-c":
        return True
    if words[0] == "sslsv" and len(words) > 1 and words[1].startswith("-"):
        return True  # sslsv --version
    arguments = words[program:]
    if all(a.startswith("-") for a in arguments) or "|" in text:
        return False  # options named in prose (`sslsv check-manifest --deep`), alternatives (voxceleb|musan)
    if words[0] == "sslsv" and words[1:2] == ["prepare"] and len(arguments) < 3:
        return False  # `sslsv prepare voxceleb`: the command named, its folders given elsewhere
    placeholder = any(re.fullmatch(r"[A-Z][A-Z0-9_:]*", w.strip("[]()")) for w in arguments)
    return bool(arguments) and not placeholder and not any(c in text for c in "[]") and "..." not in text


def extract(path: Path) -> list[DocCommand]:
    """Commands of one markdown file, in order."""
    rel = str(path.relative_to(ROOT))
    found: list[DocCommand] = []
    fence: str | None = None
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        match = FENCE.match(raw)
        if match:
            fence = None if fence is not None else match.group(1).lower()
            continue
        if fence is not None:
            if fence not in SHELL_FENCES:
                continue
            line = raw.rstrip()
            if pending:
                pending += " " + line.strip().rstrip("\\").strip()
                if not line.endswith("\\"):
                    found.append(DocCommand(rel, start, _strip_comment(pending)))
                    pending = ""
                continue
            command = _command(line.rstrip("\\") if line.endswith("\\") else _strip_comment(line))
            if command is None:
                continue
            if line.endswith("\\"):
                pending, start = command.strip(), number
            else:
                found.append(DocCommand(rel, number, command))
            continue
        for span in INLINE.findall(raw):
            command = _command(span)
            if command is not None and _invocation(command):
                found.append(DocCommand(rel, number, command))
    return found


def all_commands() -> list[DocCommand]:
    return [c for path in doc_files() for c in extract(path)]


class _Parsed(Exception):
    """Raised by the patched parse methods once the arguments parsed: nothing after parsing runs."""

    def __init__(self, namespace):
        super().__init__("parsed")
        self.namespace = namespace


def _parse_only(function, argv: list[str]) -> argparse.Namespace:
    """Call a command's main(argv) up to its first successful parse; SystemExit (argparse's error) propagates."""
    originals = {name: getattr(argparse.ArgumentParser, name)
                 for name in ("parse_args", "parse_intermixed_args", "parse_known_args")}

    def wrap(name):
        def parse(self, *args, **kwargs):
            result = originals[name](self, *args, **kwargs)
            raise _Parsed(result)
        return parse

    for name in ("parse_args", "parse_intermixed_args"):
        setattr(argparse.ArgumentParser, name, wrap(name))
    try:
        function(argv)
    except _Parsed as parsed:
        return parsed.namespace
    finally:
        for name, method in originals.items():
            setattr(argparse.ArgumentParser, name, method)
    raise AssertionError("the command returned without parsing its arguments")


def _words(text: str) -> list[str]:
    return shlex.split(text.replace("$PWD", str(ROOT)))


def _train_config_check(argv: list[str]) -> None:
    """Load a train.py config that exists here with the command's overrides (unknown keys fail)."""
    from sslsv.config import load_config

    positional = [a for a in argv if not a.startswith("-")]
    if positional and positional[0].endswith(".yml") and (ROOT / positional[0]).is_file():
        overrides = [a for a in positional[1:] if "=" in a]
        load_config(ROOT / positional[0], overrides)


def _script_main(path: Path):
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(ROOT))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT))
    return module.main


def check(command: DocCommand) -> str | None:
    """None when the command parses (or is not checked), else the reason it does not."""
    from sslsv.cli import COMMANDS, command as sslsv_command

    words = _words(command.text)
    try:
        if words[0] == "sslsv":
            if len(words) < 2 or words[1].startswith("-"):
                return None  # sslsv -h / --version: the dispatcher's own options
            if words[1] not in COMMANDS:
                return f"unknown subcommand {words[1]!r}"
            _parse_only(sslsv_command(words[1]), words[2:])
            if words[1] == "train":
                _train_config_check(words[2:])
            return None
        if words[0] == "torchrun" and "-m" in words and words[words.index("-m") + 1:][:1] == ["sslsv"]:
            words = words[words.index("-m") + 1:]
            return check(DocCommand(command.file, command.line, shlex.join(words)))
        if words[0] == "torchrun":
            scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
            if not scripts:
                return None
            words = ["python"] + words[scripts[0]:]
        if words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
            script, argv = words[1], words[2:]
            if script in ("train.py", "evaluate.py"):
                from sslsv.cli import evaluate, train

                _parse_only((train if script == "train.py" else evaluate).main, argv)
                if script == "train.py":
                    _train_config_check(argv)
                return None
            if script.startswith("benchmarks/") and (ROOT / script).is_file():
                _parse_only(_script_main(ROOT / script), argv)
                return None
            return None if (ROOT / script).is_file() else f"{script} does not exist"
        if words[0] == "make":
            targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
            missing = [t for t in words[1:] if "=" not in t and t not in targets]
            return f"no make target {missing[0]!r}" if missing else None
        return None
    except SystemExit as error:
        return None if error.code in (0, None) else f"argparse rejected it (exit {error.code})"
    except Exception as error:  # noqa: BLE001 - any failure to parse is a finding
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List and parse-check the commands of README.md and docs/*.md.")
    parser.add_argument("--failing", action="store_true", help="print only the commands that do not parse")
    args = parser.parse_args(argv)
    import contextlib
    import io

    failures = 0
    for command in all_commands():
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            reason = check(command)
        failures += reason is not None
        if reason is not None or not args.failing:
            print(f"{'FAIL' if reason else 'ok  '} {command}" + (f"\n     -> {reason}" if reason else ""))
    print(f"{failures} failing", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
