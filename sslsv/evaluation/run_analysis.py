"""`sslsv analyze` on a run: its embeddings of a labelled manifest, extracted as evaluate.py extracts them, then
the SRR / NMI of sslsv.evaluation.analysis and a 2-D projection plot. Apart from analysis.py, which evaluate.py
uses for its score histograms, so that neither module imports the other."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sslsv.evaluation.analysis import SRRResult, plot_projection, speaker_recording_ratio

__all__ = ["RunAnalysis", "analyze_run"]


@dataclass
class RunAnalysis:
    """What `analyze_run` measured: the SRR / NMI figures and where the projection plot went."""

    run_dir: str
    source: str
    manifest: str
    num_utterances: int
    srr: SRRResult
    projection: Path


def analyze_run(run_dir: str | Path, manifest: str | Path, projection: str = "pca", device: str = "auto",
                output: str | Path | None = None, progress: bool = False, amp: str | None = None,
                channels_last: bool | None = None, compile: bool | None = None) -> RunAnalysis:
    """SRR and NMI (Eq. 14-15) of a run's embeddings of a labelled manifest, plus a 2-D projection plot.

    Args:
        run_dir: trained run directory.
        manifest: labelled manifest (Speaker and Session columns), relative to the run's data root.
        projection: "pca" or "tsne".
        device: "auto", "cpu", "cuda" or "cuda:N".
        output: projection PNG (default RUN/projection_<manifest stem>.png).
        progress: show the extraction progress bar.
        amp, channels_last, compile: how the embeddings are extracted, as evaluate.py's --amp, --channels-last and
            --compile; None: the run's evaluation.amp / channels_last / compile.

    Raises:
        RunError, ManifestError, AudioError: unusable run, manifest or audio.
    """
    from sslsv.data.manifest import read_manifest
    from sslsv.distributed import resolve_device
    from sslsv.evaluation.evaluate import Backends, embed_utterances, with_extraction
    from sslsv.runs import load_model

    torch_device = resolve_device(device)
    model, config, source = load_model(run_dir, device=torch_device)
    config = with_extraction(config, amp, channels_last, None, compile)
    root = Path(config.dataset.data_root)
    table = read_manifest(root / manifest)
    # evaluate.py's extraction (batching, precision, layout, compilation), full-length utterances
    embeddings = embed_utterances(model, [str(root / f) for f in table.files], config, torch_device, Backends(),
                                  progress)
    result = speaker_recording_ratio(embeddings, table.speakers, table.sessions)
    out = Path(output) if output else Path(run_dir) / f"projection_{Path(manifest).stem}.png"
    plot_projection(embeddings, table.speakers, out, method=projection)
    return RunAnalysis(str(run_dir), str(source), str(manifest), len(table), result, out)
