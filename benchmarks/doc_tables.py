"""Results tables in README.md and docs/: written by a benchmarks/ script, marked with the commit they ran on.

Every measured table in the docs sits between two markers:

    <!-- table: NAME; written by benchmarks/X.py; commit abc1234; configs: configs/a.yml; code: sslsv/b.py -->
    | ... the table ... |
    <!-- table-end: NAME -->

`write_table` is the one writer the benchmark scripts use (`--write FILE`): it replaces the text between the
markers and records the commit the script ran on (`git rev-parse HEAD`, with "+dirty" when the table's own
configs or code had uncommitted changes). `configs` are the shipped configs the table measures (with every file
they inherit through `base:`), `code` the modules the figures depend on besides the script itself.

`stale_commits(marker)` lists the commits after the recorded one that changed those files
(`git log <commit>..HEAD -- <script> <configs> <code>`); tests/test_doc_tables.py fails when a table is stale and
not in STALE_ALLOWED, the documented allow-list of tables measured on older code (each with why and the command
that refreshes it), and when an allowed table is no longer stale (remove it from the list).

    python benchmarks/doc_tables.py          # every table: its commit and whether it is fresh
"""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- table: (?P<name>[\w.-]+); written by (?P<script>\S+); "
                    r"commit (?P<commit>[0-9a-f]{7,40})(?P<dirty>\+dirty)?"
                    r"(?:; configs: (?P<configs>[^;]*?))?(?:; code: (?P<code>[^;]*?))? -->")

# Tables measured before a change of what they depend on: name -> why, and the command that measures them again.
STALE_ALLOWED = {
    "methods-results": "rows written between 2026-11-29 (commit 24224b9) and 2026-12-02 (see the measured column); "
                       "the demo "
                       "configs, methods and front-end changed since (the front-end change alone moved SimCLR from "
                       "25.74 % to 27.41 %, docs/benchmarks.md); re-run with "
                       "`python benchmarks/bench_methods.py --write docs/methods.md` (about 5 min a method alone on "
                       "2 CPU cores, 10-20 min when the cores are shared)",
    "methods-ablations": "table from commit 24224b9, rows measured on 2026-12-02 (commits c98257e to d67a53a) before the front-end and DINO head changes; re-run "
                         "with `python benchmarks/bench_methods.py --ablations --write docs/methods.md`",
    "pseudo-labels-192-0.1": "measured on 2026-11-22 (commit 4cf860c) with the flat k-means that the 10 % size then "
                             "used; re-run with `python benchmarks/bench_pseudo_labels.py --fraction 0.1 --dims 192 "
                             "--threads 2 --write docs/pseudo_labels.md` (about 2 min alone on 2 CPU cores)",
    "asnorm-timing": "measured on 2026-11-22 (commit 0c5f425); sslsv/evaluation/normalization.py changed since; "
                     "re-run with `python benchmarks/bench_asnorm.py --write docs/benchmarks.md`",
    "pseudo-labels-192": "measured on 2026-11-29 (commit d9f9527); the clustering code changed since; re-run with "
                         "`python benchmarks/bench_pseudo_labels.py --dims 192 --iterations 10 --refine-iterations 2 "
                         "--threads 1 --write docs/benchmarks.md` (68 min on a loaded 2-core machine)",
    "pseudo-labels-512": "measured on 2026-12-02 (commit b46232b); the clustering code changed since; re-run with "
                         "`python benchmarks/bench_pseudo_labels.py --dims 512 --iterations 10 --refine-iterations 2 "
                         "--threads 1 --write docs/benchmarks.md`",
}


# Measured tables that no benchmarks/ script writes yet: (file, the table's header line) -> why. A results table
# (a header with EER, minDCF or wall time) outside markers and not listed here fails tests/test_doc_tables.py.
UNMARKED_TABLES = {
    ("docs/methods.md", "| epoch (step) | loss | lr | teacher entropy | usage entropy | KL teacher-student | "
                        "embedding std | effective rank | validation EER |"):
        "per-epoch metrics of a DINO run stopped after 7 of 20 epochs (commit 302a029), copied from its metrics.jsonl; "
        "`python benchmarks/dino_learning_curve.py ... --write docs/methods.md` writes the completed runs' table "
        "(dino-learning-curve)",
    ("docs/methods.md", "| run | step | teacher entropy | usage entropy | KL teacher-student | embedding std | "
                        "effective rank | validation EER |"):
        "per-step metrics of two DINO runs stopped after 20 steps (2026-12-05), copied from their metrics.jsonl; the "
        "completed run's table is written by `python benchmarks/dino_learning_curve.py ... --write docs/methods.md`",
    ("docs/methods.md", "| run | epochs (steps) | training time | final validation EER | test EER | "
                        "random weights (test) |"):
        "the table `benchmarks/dino_learning_curve.py` printed for its 150-step run (2026-12-05, commit 6ca4b48), "
        "copied by hand with the run's command above it",
    ("docs/methods.md", "| run | demo config | EER (%) | minDCF0.01 | train wall time (s) | against |"):
        "rows of `benchmarks/bench_methods.py --methods rdino sdpn vibcreg simclr_ssps simclr_margin dino_ssps` "
        "(2026-12-05, commit 40218d2) copied by hand beside the older methods-results table, which is stale",
    ("docs/benchmarks.md", "| `trainer.seed` | float32 test EER (%) | bf16 test EER (%) |"):
        "six SimCLR demo runs (3 seeds, float32 and bf16, 2026-12-05, commit fb70d6a), each trained and evaluated "
        "with the two commands below the table, copied by hand",
    ("docs/evaluation.md", "| back-end | EER (%) | minDCF0.01 | Cllr | minCllr |"):
        "PLDA rows of the two evaluate.py commands printed above it, on `make demo`'s run at commit 2d52321",
    ("docs/evaluation.md", "| trials | fraction | utterances | speakers | init | EER (%) | minDCF0.01 |"):
        "the table.md that the README's `sslsv finetune` command writes, copied by hand",
    ("docs/pseudo_labels.md", "| round | classes | kept | NMI | purity | EER (%) | minDCF0.01 |"):
        "the rounds.md table that `sslsv multistage configs/multistage/demo.yml` writes, copied by hand",
}
RESULT_HEADER = re.compile(r"^\|.*(EER|minDCF|[Ww]all time)")


@dataclass(frozen=True)
class TableMarker:
    file: Path
    line: int
    name: str
    script: str
    commit: str
    dirty: bool
    configs: tuple[str, ...]
    code: tuple[str, ...]

    @property
    def depends(self) -> list[str]:
        """The script, the configs with every file they inherit (bases as they are now), and the code."""
        return [self.script, *config_files(list(self.configs)), *self.code]


def git(*args: str) -> str:
    """Output of a git command in the repository; CalledProcessError / FileNotFoundError when git cannot answer."""
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def config_files(configs: list[str]) -> list[str]:
    """The configs and every file they inherit through `base:` (relative to the repository root), in order."""
    out: list[str] = []

    def visit(path: Path) -> None:
        rel = str(path.resolve().relative_to(ROOT))
        if rel in out:
            return
        out.append(rel)
        data = yaml.safe_load(path.read_text()) or {}
        bases = data.get("base") or []
        for base in [bases] if isinstance(bases, str) else bases:
            visit(path.parent / base)

    for config in configs:
        visit(ROOT / config)
    return out


def marker_line(name: str, script: str, commit: str, configs: list[str], code: list[str] = ()) -> str:
    parts = [f"table: {name}", f"written by {script}", f"commit {commit}"]
    parts += [f"configs: {' '.join(configs)}"] if configs else []
    parts += [f"code: {' '.join(code)}"] if code else []
    return "<!-- " + "; ".join(parts) + " -->"


def current_commit(depends: list[str]) -> str:
    """HEAD's short hash, with +dirty when one of `depends` has uncommitted changes."""
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", *depends)
    return commit + ("+dirty" if dirty else "")


def write_table(path: str | Path, name: str, script: str, table: str, configs: list[str] = (),
                code: list[str] = ()) -> None:
    """Replace table NAME of a markdown file (between its markers) with `table`, recording HEAD's commit; a file
    without the markers gets the table appended. `configs` are the top-level configs (their bases count too: TableMarker.depends)."""
    path = Path(path)
    configs = list(configs)
    commit = current_commit([script, *config_files(configs), *code])
    head = marker_line(name, script, commit, configs, list(code))
    end = f"<!-- table-end: {name} -->"
    text = path.read_text() if path.exists() else ""
    begin = re.search(rf"<!-- table: {re.escape(name)};[^\n]*-->", text)
    block = f"{head}\n{table.strip()}\n{end}"
    if begin and end in text[begin.end():]:
        text = text[: begin.start()] + block + text[text.index(end, begin.end()) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)
    print(f"{path}: table {name} written (commit {commit})")


def table_text(path: str | Path, name: str) -> str:
    """The text between table NAME's markers ("" when absent)."""
    text = Path(path).read_text() if Path(path).exists() else ""
    begin = re.search(rf"<!-- table: {re.escape(name)};[^\n]*-->\n", text)
    end = f"<!-- table-end: {name} -->"
    if not begin or end not in text[begin.end():]:
        return ""
    return text[begin.end(): text.index(end, begin.end())]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def markers(files: list[Path] | None = None) -> list[TableMarker]:
    found = []
    for path in files or doc_files():
        fenced = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced  # an example marker in a code block is not a table
            if fenced or "<!-- table:" not in line:
                continue
            match = MARKER.search(line)
            if match is None:
                expected = marker_line("NAME", "benchmarks/X.py", "abc1234", ["a.yml"], ["b.py"])
                raise ValueError(f"{path}:{number}: malformed table marker {line.strip()!r}; expected {expected}")
            found.append(TableMarker(path, number, match["name"], match["script"], match["commit"],
                                     bool(match["dirty"]), tuple((match["configs"] or "").split()),
                                     tuple((match["code"] or "").split())))
    return found


def unmarked_tables(files: list[Path] | None = None) -> list[tuple[str, int, str]]:
    """(file, line, header) of every results table (RESULT_HEADER) outside table markers."""
    found = []
    for path in files or doc_files():
        inside = False
        previous = ""
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "<!-- table:" in line:
                inside = True
            elif "<!-- table-end:" in line:
                inside = False
            elif not inside and RESULT_HEADER.match(line) and not previous.startswith("|"):
                found.append((str(path.relative_to(ROOT)), number, line.strip()))
            previous = line
    return found


def stale_commits(marker: TableMarker) -> list[str]:
    """Commits after the recorded one that changed the table's script, configs or code (oldest last)."""
    log = git("log", "--format=%h %s", f"{marker.commit}..HEAD", "--", *marker.depends)
    return [line[:100] for line in log.splitlines() if line]


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(description="List the docs' results tables, their commits and freshness.").parse_args(argv)
    for marker in markers():
        try:
            stale = stale_commits(marker)
            state = f"stale: {len(stale)} later commit(s) changed its inputs" if stale else "fresh"
        except (subprocess.CalledProcessError, FileNotFoundError) as error:
            state = f"unknown ({type(error).__name__})"
        allowed = " (allowed: STALE_ALLOWED)" if marker.name in STALE_ALLOWED else ""
        print(f"{marker.file.relative_to(ROOT)}:{marker.line} {marker.name} [{marker.script} @ {marker.commit}]: "
              f"{state}{allowed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
