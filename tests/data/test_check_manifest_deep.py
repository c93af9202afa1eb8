"""`deep_check_manifest` / `sslsv check-manifest --deep`: every file decoded, every problem counted and named."""
import numpy as np
import pytest
import soundfile as sf

from sslsv.cli.data import check_manifest_main
from sslsv.data.manifest import ManifestError, check_manifest, deep_check_manifest, read_manifest
from tests.bad_audio_cases import REFUSED_KIND, make_bad_inputs

SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A data root whose manifest lists every bad-audio case once (the loading ones first) and one row twice."""
    root = tmp_path_factory.mktemp("deep")
    cases = make_bad_inputs(root / "cases")
    names = sorted(cases, key=lambda name: not cases[name][1])
    rows = [f"{cases[name][0].relative_to(root).as_posix()},spk{i % 2}" for i, name in enumerate(names)]
    rows.append(rows[0])
    (root / "all.csv").write_text("File,Speaker\n" + "\n".join(rows) + "\n")
    good = [r for r, name in zip(rows, names) if cases[name][1] and name != "silence"]
    (root / "good.csv").write_text("File,Speaker\n" + "\n".join(good) + "\n")
    return root, cases, names


def test_every_problem_is_found_counted_and_named(corpus):
    root, cases, names = corpus
    manifest = read_manifest(root / "all.csv")
    report = deep_check_manifest(manifest, root, SR, min_seconds=0.5, workers=2, progress=False)
    assert report.files == len(names) + 1
    line = {name: i + 2 for i, name in enumerate(names)}
    by_line = {}
    for problem in report.errors:
        by_line.setdefault(problem.line, set()).add(problem.kind)
    for name, kind in REFUSED_KIND.items():
        if name in cases:
            assert kind in by_line[line[name]], (name, by_line.get(line[name]))
    assert by_line[len(names) + 2] == {"duplicate"}
    loading = [name for name in names if cases[name][1]]
    assert not any(line[name] in by_line for name in loading)  # stereo, 8 kHz, 24-bit, FLAC, unicode... are fine
    assert [(p.line, p.kind) for p in report.warnings] == [(line["silence"], "silent")]
    # loading files, the duplicate row, the NaN and Inf tones, 0.05 s and one sample; refused headers count 0
    assert report.seconds == pytest.approx(len(loading) + 1 + 2 + 0.05 + 1 / SR, abs=1e-3)

    summary = report.summary(listed=1)
    assert summary.startswith(f"{root / 'all.csv'}: {len(names) + 1} files, 0.00 h decoded")
    assert "  non-finite: 2\n" in summary and "    ... and 1 more" in summary
    assert "line" in summary and "nan_samples.wav: 320 of 16000 decoded samples are NaN or Inf" in summary
    assert "warnings: 1 in 1 rows\n  silent: 1" in summary


def test_header_check_sees_header_problems_but_not_decoded_ones(corpus):
    root, cases, names = corpus
    with pytest.raises(ManifestError) as info:
        check_manifest(read_manifest(root / "all.csv"), root, SR, 0.5)
    message = str(info.value)
    for name in ("missing", "empty", "directory", "data_shorter_than_header", "short_0.05s", "one_sample"):
        assert cases[name][0].name in message, name
    assert "nan_samples.wav" not in message  # only decoding finds NaN: --deep


def test_cli_deep_exit_status_and_summary(corpus, capsys):
    root, cases, names = corpus
    assert check_manifest_main([str(root / "all.csv"), "--data-root", str(root), "--deep", "--workers", "2"]) == 2
    captured = capsys.readouterr()
    assert "non-finite: 2" in captured.out and "duplicate: 1" in captured.out
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    unusable = sum(not cases[name][1] for name in names) + 1  # and the duplicate row
    assert error_lines == [f"error: {root / 'all.csv'}: {unusable} of {len(names) + 1} rows are unusable "
                           f"(listed above)"]
    assert "Traceback" not in captured.err


def test_cli_deep_passes_good_files_and_only_warns_about_silence(corpus, capsys, tmp_path):
    root, cases, _ = corpus
    assert check_manifest_main([str(root / "good.csv"), "--data-root", str(root), "--deep"]) == 0
    out = capsys.readouterr().out
    assert "errors: none" in out and "warnings: none" in out
    silent = tmp_path / "silent.csv"
    silent.write_text(f"File,Speaker\n{cases['silence'][0]},s\n{cases['pcm16'][0]},s\n")
    assert check_manifest_main([str(silent), "--data-root", str(root), "--deep"]) == 0
    out = capsys.readouterr().out
    assert "errors: none" in out and "silent: 1" in out and "silence.wav: silent (peak" in out


def test_cli_header_check_reports_duplicates(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", np.full(SR, 0.1, dtype=np.float32), SR)
    (tmp_path / "m.csv").write_text("File,Speaker\na.wav,x\na.wav,y\n")
    assert check_manifest_main([str(tmp_path / "m.csv"), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "line 3: a.wav: duplicate row (the same file is on line 2)" in err and "Traceback" not in err
