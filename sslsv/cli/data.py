"""`sslsv prepare` and `sslsv check-manifest`: build the data root from downloaded corpora, check a manifest
(headers, or every file decoded with --deep)."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command


def build_prepare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslsv prepare", description="Prepare corpora under a data root.")
    sub = parser.add_subparsers(dest="corpus", required=True, metavar="{voxceleb,musan,rirs}")
    vox = sub.add_parser("voxceleb", help="VoxCeleb1/2: extract, convert m4a, manifests, trial lists",
                         description="VoxCeleb1/2: extract, convert m4a, manifests, trial lists.")
    vox.add_argument("source", help="folder with the downloaded archives or extracted folders")
    vox.add_argument("--data-root", default="data", help="output data root (default data)")
    vox.add_argument("--trials-dir", help="folder with veri_test2.txt, list_test_all2.txt, list_test_hard2.txt")
    vox.add_argument("--checksums", help="'md5  name' lines; archives listed there are verified")
    vox.add_argument("--workers", type=int, default=4, help="parallel m4a conversions (default 4)")
    vox.add_argument("--versions", nargs="+", choices=["1", "2"], default=["1", "2"],
                     help="VoxCeleb versions to prepare (default: 1 2)")
    vox.add_argument("--download", action="store_true", help="download the files listed in --url-file into SOURCE first")
    vox.add_argument("--url-file", help="lines 'URL [NAME]' (VoxCeleb URLs come with your registration)")
    musan = sub.add_parser("musan", help="cut MUSAN into short chunks under DATA_ROOT/musan_split",
                           description="Cut MUSAN into short chunks under DATA_ROOT/musan_split.")
    musan.add_argument("musan_dir", help="the extracted musan/ folder")
    musan.add_argument("--data-root", default="data", help="output data root (default data)")
    musan.add_argument("--chunk-seconds", type=float, default=5.0, help="length of the cut chunks (default 5)")
    musan.add_argument("--workers", type=int, default=2, help="parallel workers (default 2)")
    rirs = sub.add_parser("rirs", help="list and check RIRS_NOISES impulse responses",
                          description="List and check RIRS_NOISES impulse responses.")
    rirs.add_argument("rirs_dir", help="the extracted RIRS_NOISES/ folder")
    rirs.add_argument("--data-root", default="data", help="output data root (default data)")
    rirs.add_argument("--subsets", nargs="+", default=["simulated_rirs"],
                      help="RIRS_NOISES sub-folders to list (default simulated_rirs)")
    return parser


def prepare_main(argv: list[str] | None = None) -> int:
    """sslsv prepare voxceleb|musan|rirs ...: build the data root from the downloaded corpora."""
    parser = build_prepare_parser()
    args = parser.parse_args(argv)
    if args.corpus == "voxceleb" and args.download and not args.url_file:
        parser.error("--download needs --url-file")

    def run() -> None:
        import os

        from sslsv.data.prepare import (download, prepare_musan, prepare_rirs, prepare_voxceleb, read_checksums,
                                        read_url_file)

        if args.corpus == "voxceleb":
            if args.download:
                sums = read_checksums(args.checksums) if args.checksums else None
                download(read_url_file(args.url_file), args.source, sums)
            result = prepare_voxceleb(args.source, args.data_root, args.trials_dir, args.checksums, args.workers,
                                      versions=tuple(args.versions))
            for name in ("voxceleb1", "voxceleb2"):
                manifest = result[name]
                if manifest is not None:
                    print(f"{manifest.path}: {len(manifest)} files, {len(set(manifest.speakers))} speakers, "
                          f"{sum(manifest.durations) / 3600:.1f} h")
            for path in result["trials"]:
                print(f"trials: {path}")
        elif args.corpus == "musan":
            out = prepare_musan(args.musan_dir, args.data_root, args.chunk_seconds, workers=args.workers)
            print(f"{out}: ready (augmentation.musan_dir={os.path.relpath(out, args.data_root)})")
        else:
            out = prepare_rirs(args.rirs_dir, args.data_root, subsets=args.subsets)
            print(f"{out}: ready")

    return run_command(run)


def check_manifest_main(argv: list[str] | None = None) -> int:
    """sslsv check-manifest MANIFEST [--deep]: check every file (headers, or decoded with --deep)."""
    parser = argparse.ArgumentParser(
        prog="sslsv check-manifest",
        description="Check every file of a manifest: duplicate rows, missing, directories, empty, unreadable, "
                    "too short, WAV data shorter than its header, wrong rate (headers only, fast). With --deep, "
                    "decode every file too: NaN/Inf samples, truncated data in any format, silence (a warning). "
                    "Exit status 2 when a file is unusable.")
    parser.add_argument("manifest", help="manifest CSV (File,Speaker,...)")
    parser.add_argument("--data-root", default="data", help="folder the manifest's File column is relative to")
    parser.add_argument("--sample-rate", type=int, default=16000, help="expected sample rate (default 16000)")
    parser.add_argument("--min-seconds", type=float, default=0.0,
                        help="report files shorter than this (never less than 0.1 s, the readers' floor)")
    parser.add_argument("--strict-rate", action="store_true", help="report files whose rate differs")
    parser.add_argument("--deep", action="store_true",
                        help="decode every file (NaN/Inf, data shorter than its header, silence); a progress bar "
                             "and a summary per kind of problem")
    parser.add_argument("--workers", type=int, default=4, help="threads reading files (default 4)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")

    def run() -> None:
        from sslsv.data.manifest import ManifestError, check_manifest, deep_check_manifest, read_manifest

        manifest = read_manifest(args.manifest)
        if not args.deep:
            durations = check_manifest(manifest, args.data_root, args.sample_rate, args.min_seconds, args.workers,
                                       allow_resample=not args.strict_rate)
            print(f"{args.manifest}: {len(manifest)} files OK, {sum(durations) / 3600:.2f} h")
            return
        report = deep_check_manifest(manifest, args.data_root, args.sample_rate, args.min_seconds, args.workers,
                                     allow_resample=not args.strict_rate)
        print(report.summary())
        if report.errors:
            rows = len({problem.line for problem in report.errors})
            raise ManifestError(f"{args.manifest}: {rows} of {report.files} rows are unusable (listed above)")

    return run_command(run)
