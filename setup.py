from setuptools import find_packages, setup

setup(
    name="sslsv",
    version="0.1.0",
    description="Self-supervised speaker verification: one joint-embedding trainer, encoders and SSL methods",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["sslsv", "sslsv.*"]),
    install_requires=[
        "torch==2.11.0",
        "torchaudio==2.11.0",  # 2.11.1 on PyPI fails to load beside torch 2.11.0 (undefined symbol)
        "numpy",
        "scipy",
        "pandas",
        "scikit-learn",
        "faiss-cpu",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "tensorboard",
        "soundfile",
        "espeakng-loader",  # the espeak-ng engine and voices for the demo corpus
        "kaldiio",  # Kaldi ark/scp embeddings (sslsv embed, score-trials)
    ],
    extras_require={
        "test": ["pytest"],
        "onnx": ["onnx", "onnxruntime"],
        "audio": ["av"],  # m4a/aac decoding (an ffmpeg executable on PATH works too)
        "trackers": ["wandb", "mlflow"],  # trainer.loggers
    },
    entry_points={"console_scripts": ["sslsv=sslsv.cli:main"]},
)
