"""Results tables in README.md and docs/ carry the commit they were measured on (benchmarks/doc_tables.py), and a
table whose script, configs or code changed since is either measured again or listed, with why, in STALE_ALLOWED."""
import subprocess

import pytest

from benchmarks.doc_tables import (ROOT, STALE_ALLOWED, UNMARKED_TABLES, git, markers, stale_commits,
                                   table_text, unmarked_tables, write_table)

MARKERS = markers()


def history_or_skip(commit: str) -> None:
    """Skip (with the reason) when git or the recorded commit is not available: a shallow clone, an export."""
    try:
        if git("rev-parse", "--is-shallow-repository") == "true":
            pytest.skip("shallow clone: the commits the tables were measured on are not here (git fetch --unshallow)")
        git("cat-file", "-e", f"{commit}^{{commit}}")
    except FileNotFoundError:
        pytest.skip("git is not installed")
    except subprocess.CalledProcessError:
        pytest.skip(f"no git history with commit {commit} (not a clone of the repository?)")


def test_every_marker_names_a_script_and_its_inputs():
    assert {m.name for m in MARKERS} >= {"methods-results", "asnorm-timing", "pseudo-labels-192"}
    names = [m.name for m in MARKERS]
    assert len(names) == len(set(names)), "two tables with one name"
    for marker in MARKERS:
        assert marker.script.startswith("benchmarks/") and (ROOT / marker.script).is_file(), marker
        for path in [*marker.configs, *marker.code]:
            assert (ROOT / path).exists(), f"{marker.file}:{marker.line}: {path} does not exist"
        assert "\n|" in "\n" + table_text(marker.file, marker.name), f"{marker.name}: no table between its markers"


def test_results_tables_are_marked_or_listed():
    found = {(file, header): line for file, line, header in unmarked_tables()}
    unlisted = [f"{file}:{line}: {header}" for (file, header), line in found.items()
                if (file, header) not in UNMARKED_TABLES]
    assert not unlisted, ("results tables without a benchmarks/doc_tables.py marker (write them with a script, or "
                          "list them in UNMARKED_TABLES with why):\n" + "\n".join(unlisted))
    gone = [key for key in UNMARKED_TABLES if key not in found]
    assert not gone, f"UNMARKED_TABLES lists tables that are gone or marked now: {gone}"


@pytest.mark.parametrize("marker", MARKERS, ids=[m.name for m in MARKERS])
def test_table_is_fresh_or_allowed(marker):
    history_or_skip(marker.commit)
    stale = stale_commits(marker)
    if marker.name in STALE_ALLOWED:
        assert stale, f"{marker.name} is fresh now: remove it from STALE_ALLOWED in benchmarks/doc_tables.py"
        return
    assert not stale, (f"{marker.file}:{marker.line}: table {marker.name} was measured at {marker.commit}, but "
                       f"{len(stale)} later commit(s) changed its inputs ({', '.join(stale[:3])}); re-run "
                       f"{marker.script} --write {marker.file.relative_to(ROOT)}, or list it in STALE_ALLOWED with why")


def test_allow_list_names_existing_tables():
    assert set(STALE_ALLOWED) <= {m.name for m in MARKERS}


def test_write_table_replaces_between_markers_and_records_head(tmp_path):
    history_or_skip("HEAD")
    doc = tmp_path / "doc.md"
    doc.write_text("# t\n\nbefore\n")
    write_table(doc, "demo", "benchmarks/bench_asnorm.py", "| a |\n|---|\n| 1 |", code=["sslsv/evaluation"])
    write_table(doc, "demo", "benchmarks/bench_asnorm.py", "| a |\n|---|\n| 2 |", code=["sslsv/evaluation"])
    text = doc.read_text()
    assert text.count("<!-- table: demo;") == 1 and "| 2 |" in text and "| 1 |" not in text and "before" in text
    (marker,) = markers([doc])
    assert marker.commit == git("rev-parse", "--short", "HEAD") and marker.code == ("sslsv/evaluation",)
