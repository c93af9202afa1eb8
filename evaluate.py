"""Evaluate a run: python evaluate.py [RUN] --trials vox1_O [vox1_E vox1_H] (= sslsv evaluate)"""
from sslsv.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main(prog="evaluate.py"))
