"""SRR / NMI against hand-computed values, and the plots."""
import numpy as np
import pytest

from sslsv.evaluation.analysis import nmi, plot_projection, plot_score_histograms, speaker_recording_ratio


def _nmi_reference(a, b):
    """Eq. 15 from counts: 2 I / (H(a) + H(b)), natural logs."""
    a, b = np.unique(a, return_inverse=True)[1], np.unique(b, return_inverse=True)[1]
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum()
    h = lambda q: -(q[q > 0] * np.log(q[q > 0])).sum()
    return 2 * mi / (h(pa) + h(pb))


def test_nmi_matches_equation_15():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 300), rng.integers(0, 7, 300)
    assert nmi(a, b) == pytest.approx(_nmi_reference(a, b), rel=1e-9)
    assert nmi(a, a) == pytest.approx(1.0)


def _embeddings(speaker_strength, session_strength, seed=0):
    rng = np.random.default_rng(seed)
    speakers, sessions, x = [], [], []
    centres = rng.standard_normal((8, 16))
    for s in range(8):
        for v in range(3):
            channel = rng.standard_normal(16)
            for _ in range(6):
                x.append(speaker_strength * centres[s] + session_strength * channel + 0.3 * rng.standard_normal(16))
                speakers.append(f"id{s}")
                sessions.append(f"v{v}")
    return np.array(x), speakers, sessions


def test_srr_prefers_speaker_clusters():
    good = speaker_recording_ratio(*_embeddings(3.0, 0.5))
    biased = speaker_recording_ratio(*_embeddings(0.5, 3.0))
    assert good.num_clusters == 8
    assert good.nmi_speakers > 0.9 and good.srr > biased.srr
    assert good.srr == pytest.approx(good.nmi_speakers / good.nmi_recordings)
    with pytest.raises(ValueError, match="3 embeddings, 2 speaker"):
        speaker_recording_ratio(np.ones((3, 2)), ["a", "b"], ["x", "y", "z"])


def test_plots_are_written(tmp_path):
    x, speakers, _ = _embeddings(3.0, 0.5)
    points = plot_projection(x, speakers, tmp_path / "pca.png", max_speakers=4)
    assert points.shape == (4 * 18, 2) and (tmp_path / "pca.png").stat().st_size > 1000
    plot_projection(x, speakers, tmp_path / "tsne.png", method="tsne", max_speakers=3)
    assert (tmp_path / "tsne.png").is_file()
    labels = np.r_[np.ones(50), np.zeros(200)]
    scores = labels + np.random.default_rng(0).standard_normal(250)
    plot_score_histograms({"a": (scores, labels), "b": (-scores, labels)}, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="'pca' or 'tsne'"):
        plot_projection(x, speakers, tmp_path / "x.png", method="umap")
