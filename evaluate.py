"""Evaluate a run: python evaluate.py [RUN] --trials vox1_O [vox1_E vox1_H]"""
from sslsv.cli import evaluate_main

if __name__ == "__main__":
    raise SystemExit(evaluate_main())
