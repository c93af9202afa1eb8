"""Train a speaker encoder: python train.py configs/simclr/fast_resnet34.yml [key.sub=value ...]"""
from sslsv.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
