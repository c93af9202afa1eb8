"""Train a speaker encoder: python train.py configs/simclr/fast_resnet34.yml [key.sub=value ...] (= sslsv train)"""
from sslsv.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main(prog="train.py"))
