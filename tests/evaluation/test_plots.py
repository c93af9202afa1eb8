"""Every figure renders from small fixture data (Agg canvas), and has the properties that make it readable: DET
axes that hold the whole curve with standard probit ticks, labelled axes, tick labels that do not overlap, legends
outside the data, one (colour, marker) pair per speaker, the collapse thresholds drawn, run names as labels."""
import json
import math

import numpy as np
import pytest
import yaml
from scipy.stats import norm

from sslsv.evaluation.analysis import (plot_projection, plot_score_histograms, projection_figure,
                                       score_histogram_figure)
from sslsv.evaluation.fusion import plot_score_correlation
from sslsv.evaluation.metrics import det_curve
from sslsv.evaluation.plots import (_TICK_PRIORITY, MAX_TICKS, TICKS_PERCENT, det_figure, det_limits, plot_det,
                                    probit_ticks, run_names, speaker_styles)
from sslsv.methods.collapse import DEFAULT_RULES
from sslsv.methods.dino import DINO_RULES
from sslsv.training.diagnostics import collapse_reference_lines, diagnostics_figure, plot_diagnostics


def _system(separation, targets=108, nontargets=108, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(targets), np.zeros(nontargets)]
    return labels * separation + rng.standard_normal(targets + nontargets), labels


def _renderer(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _shown_ticklabels(ax, which):
    low, high = ax.get_xlim() if which == "x" else ax.get_ylim()
    low, high = min(low, high), max(low, high)
    labels = ax.get_xticklabels() if which == "x" else ax.get_yticklabels()
    index = 0 if which == "x" else 1
    return [t for t in labels if t.get_text() and low <= t.get_position()[index] <= high]


def _assert_ticks_apart(fig, ax):
    renderer = _renderer(fig)
    for which in "xy":
        boxes = [t.get_window_extent(renderer) for t in _shown_ticklabels(ax, which)]
        assert len(boxes) >= 2, which
        for a, b in zip(boxes, boxes[1:]):
            assert not _overlap(a, b), f"{which} tick labels overlap"


# ------------------------------------------------------------------------------------------------------------- DET


def test_det_axes_hold_demo_level_and_good_curves(tmp_path):
    # EERs of about 25 % and 45 % on 216 trials (the demo) and about 1 % on 22,000: every DET point with two
    # rates in (0, 1) must be inside the axes (the old fixed 0.05-60 % frame cut the demo curves off at the top).
    curves = {"simclr/demo (trained)": _system(1.3), "simclr/demo (random weights)": _system(0.2, seed=1),
              "good": _system(4.5, 2000, 20000, seed=2)}
    fig = det_figure(curves, title="three systems")
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert (x0, x1) == (y0, y1)
    for scores, labels in curves.values():
        fpr, fnr, _ = det_curve(scores, labels)
        inside = (fpr > 0) & (fnr > 0) & (fpr < 1) & (fnr < 1)  # rates of 0 and 1 are at -/+ infinity
        for rates in (fpr[inside], fnr[inside]):
            deviates = norm.ppf(rates)
            assert deviates.min() > x0 and deviates.max() < x1
    assert norm.cdf(x1) > 0.99  # the demo curves reach false-rejection rates near 99 %
    # EER markers on the FNR = FPR diagonal, one per system
    markers = [line for line in ax.lines if line.get_gid() == "eer"]
    assert len(markers) == 3
    for marker in markers:
        assert marker.get_xdata()[0] == pytest.approx(marker.get_ydata()[0])
    # standard ticks, increasing, labels in percent
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        values = [float(t.get_text()) for t in labels]
        assert values == sorted(values) and set(values) <= set(TICKS_PERCENT)
        assert {1.0, 10.0, 40.0, 90.0} <= set(values)
    assert "(%)" in ax.get_xlabel() and "(%)" in ax.get_ylabel()
    _assert_ticks_apart(fig, ax)
    # the legend (names with their EER) is outside the axes
    renderer = _renderer(fig)
    legend = ax.get_legend()
    assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
    texts = [t.get_text() for t in legend.get_texts()]
    assert any(t.startswith("simclr/demo (trained) (EER ") for t in texts)

    plot_det(curves, tmp_path / "plots" / "det.png", title="three systems")
    png = tmp_path / "plots" / "det.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000


def test_det_limits_fit_the_rates():
    low, high = det_limits([0.2, 0.45, 0.95])
    assert low < norm.ppf(0.2) and high > norm.ppf(0.95)
    assert norm.cdf(low) > 0.05 and norm.cdf(high) < 0.995  # margins, not the whole 0.001-99.999 % range
    # a single point still gets context; zero / one rates (at -/+ infinity) are ignored; tiny rates are clipped
    low, high = det_limits([0.0, 0.3, 1.0])
    assert high - low >= 1.2 and low < norm.ppf(0.3) < high
    assert det_limits([1e-9, 0.5])[0] > norm.ppf(1e-6)


def test_probit_ticks_are_standard_and_spaced():
    assert sorted(_TICK_PRIORITY) == sorted(TICKS_PERCENT)
    for limits in ((-4.5, 4.5), (-1.0, 2.6), (-0.3, 0.9), (-3.2, -2.0)):
        ticks, labels = probit_ticks(limits)
        assert 2 <= len(ticks) <= MAX_TICKS + 1
        assert all(limits[0] <= t <= limits[1] for t in ticks)
        assert min(np.diff(ticks)) >= (limits[1] - limits[0]) / MAX_TICKS - 1e-12
        assert [float(s) for s in labels] == pytest.approx([100 * norm.cdf(t) for t in ticks])


def test_det_rejects_no_system(tmp_path):
    with pytest.raises(ValueError, match="at least one system"):
        plot_det({}, tmp_path / "det.png")


# ------------------------------------------------------------------------------------------------ score histograms


def test_score_histograms_are_a_labelled_grid(tmp_path):
    systems = {f"system {i}": _system(1.0 + i, 50 + 10 * i, 200, seed=i) for i in range(5)}
    fig = score_histogram_figure(systems)
    axes = fig.axes
    assert len(axes) == 5
    rows = {round(ax.get_position().y0, 3) for ax in axes}
    cols = {round(ax.get_position().x0, 3) for ax in axes}
    assert len(rows) == 2 and len(cols) == 3  # a 2 x 3 grid, not one row of five
    renderer = _renderer(fig)
    for ax in axes:
        assert ax.get_xlabel() == "score" and ax.get_ylabel() == "density"
        assert len(_shown_ticklabels(ax, "x")) <= 7
        _assert_ticks_apart(fig, ax)
        assert "target" in ax.get_title()
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["non-target", "target", "EER threshold"]
    assert not any(_overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer)) for ax in axes)

    plot_score_histograms(systems, tmp_path / "hist.png")
    assert (tmp_path / "hist.png").stat().st_size > 20_000


# ------------------------------------------------------------------------------------------------------ projection


def test_projection_gives_every_speaker_its_own_style(tmp_path):
    rng = np.random.default_rng(0)
    speakers = np.repeat([f"id{i:05d}" for i in range(25)], 6)
    x = rng.standard_normal((150, 16)) + 3 * np.repeat(rng.standard_normal((25, 16)), 6, axis=0)
    points = plot_projection(x, speakers, tmp_path / "pca.png", max_speakers=25)
    assert points.shape == (150, 2) and (tmp_path / "pca.png").stat().st_size > 20_000

    fig = projection_figure(points, speakers, "pca", explained=(0.3, 0.1))
    ax = fig.axes[0]
    styles = set()
    for collection in ax.collections:
        colour = tuple(np.round(collection.get_facecolor()[0], 4))
        path = collection.get_paths()[0]
        styles.add((colour, path.vertices.round(4).tobytes()))
    assert len(ax.collections) == 25 and len(styles) == 25
    assert ax.get_xlabel().startswith("PCA component 1 (30.0 %") and ax.get_ylabel().startswith("PCA component 2")
    renderer = _renderer(fig)
    legend = ax.get_legend()
    assert len(legend.get_texts()) == 25
    assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))


def test_speaker_styles_are_distinct():
    for count in (5, 20, 90, 200):
        styles = speaker_styles(count)
        assert len(styles) == count and len(set(styles)) == count
    assert len({colour for colour, _ in speaker_styles(10)}) == 10


# ----------------------------------------------------------------------------------------------------- diagnostics


def _metrics(run, steps=6):
    lines = [{"epoch": 1, "step": s, "loss": 5.0 / s, "train/embedding_std": 0.01 * s,
              "train/effective_rank": 2.0 + s, "train/teacher_entropy": 0.05 + 0.01 * s} for s in range(1, steps + 1)]
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def _threshold_lines(fig):
    found = {}
    for ax in fig.axes:
        for line in ax.lines:
            gid = line.get_gid() or ""
            if gid.startswith("collapse-threshold:"):
                found.setdefault(gid.split(":", 1)[1], []).append(line.get_ydata()[0])
    return found


def test_diagnostics_draw_the_run_collapse_thresholds(tmp_path):
    run = tmp_path / "dino_run"
    _metrics(run)
    raw = {"encoder": {"name": "fast_resnet34"}, "method": {"name": "dino"},
           "collapse": {"thresholds": {"min_effective_rank": 3.0}}}
    (run / "config.yml").write_text(yaml.safe_dump(raw))
    (run / "training_summary.json").write_text(json.dumps({"entropy_bounds": {"teacher_entropy": math.log(4096)}}))
    out = plot_diagnostics(run)
    assert out == run / "diagnostics.png" and out.stat().st_size > 20_000

    from sslsv.training.diagnostics import run_reference_lines

    lines, note = run_reference_lines(run)
    assert note is None
    fig = diagnostics_figure([json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()], lines)
    found = _threshold_lines(fig)
    assert found["embedding_std"] == [0.002]
    assert found["effective_rank"] == [3.0]  # the config's override, not the default 1.5
    assert found["teacher_entropy"] == pytest.approx([0.03, 0.995 * math.log(4096)])
    for ax in fig.axes:
        assert ax.get_xlabel() == "step" and ax.get_ylabel()
    entropy = next(ax for ax in fig.axes if ax.get_title() == "train/teacher_entropy")
    assert entropy.get_yscale() == "log"  # 0.03 and 8.3 on one panel


def test_diagnostics_without_a_config_draw_no_lines(tmp_path):
    _metrics(tmp_path)
    assert plot_diagnostics(tmp_path, tmp_path / "d.png").stat().st_size > 10_000
    from sslsv.training.diagnostics import run_reference_lines

    assert run_reference_lines(tmp_path) == ({}, "no collapse thresholds drawn: no config.yml")


def test_collapse_reference_lines_follow_the_rules():
    thresholds = {"min_embedding_std": 0.002, "min_effective_rank": None, "min_teacher_entropy": 0.03,
                  "min_teacher_usage_entropy": 0.5, "teacher_sharpened_fraction": 0.75,
                  "min_teacher_information_ratio": 0.05, "max_entropy_ratio": 0.995, "min_kl_teacher_student": None}
    lines = collapse_reference_lines(DINO_RULES, thresholds)
    assert "effective_rank" not in lines and "kl_teacher_student" not in lines  # switched off
    assert [v for v, _ in lines["teacher_entropy"]] == [0.03]  # NearMaximum needs a bound
    assert "< 0.03" in lines["teacher_entropy"][0][1]
    assert set(collapse_reference_lines(DEFAULT_RULES, {"min_embedding_std": 0.002, "min_effective_rank": 1.5})) \
        == {"embedding_std", "effective_rank"}


# ------------------------------------------------------------------------------------------------------ run names


def test_run_names_tell_runs_apart(tmp_path):
    assert run_names(["models/simclr/fast_resnet34_demo"]) == ["simclr/fast_resnet34_demo"]
    assert run_names(["out/a/frac0.1/ssl", "out/b/frac0.1/ssl", "out/b/frac0.5/ssl"]) == \
        ["a/frac0.1/ssl", "b/frac0.1/ssl", "frac0.5/ssl"]
    assert run_names(["x/y/z", "x/y/z"]) == ["y/z", "y/z #2"]

    names = run_names(["finetune/frac0.1/ssl", "finetune/frac0.1/random"])
    correlation = plot_score_correlation([_system(1.0)[0], _system(1.0, seed=3)[0]], names, tmp_path / "c.png")
    assert correlation.shape == (2, 2) and (tmp_path / "c.png").stat().st_size > 5_000
