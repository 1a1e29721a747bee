"""jala_ds: distributed training for JALA (Joint-Aligned Latent Actions).

The Triton kernels live in ``kernels/`` and install under the import name ``jala_kernels``: a top-level
package called ``kernels`` would shadow Hugging Face's ``kernels`` package, which transformers probes.
"""
from setuptools import find_packages, setup

# Versions known to work together on CPU (tests, CI) and on Hopper GPUs (benchmarks).
# mosaicml-streaming needs torchvision, which pins torch; both come as one pair.
INSTALL_REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "deepspeed==0.19.8",
    "transformers==4.57.6",
    # transformers' ZeRO-3 integration (HfDeepSpeedConfig: from_pretrained and resize under zero.Init) needs it.
    "accelerate==1.15.0",
    "tokenizers==0.22.2",
    "safetensors>=0.6",
    "mosaicml-streaming==0.13.0",
    "mlflow==3.17.2",
    "pyyaml>=6.0",
    "av>=14",
    "pillow>=10",
    "numpy>=1.26",
    "matplotlib>=3.9",
    "tqdm>=4.66",
]

setup(
    name="jala_ds",
    version="0.1.0",
    description="Distributed training system for JALA vision-language-action pretraining",
    python_requires=">=3.11",
    packages=find_packages(include=["jala_ds", "jala_ds.*"]) + ["jala_kernels"],
    package_dir={"jala_kernels": "kernels"},
    package_data={"jala_ds": ["recipes/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.6", "ruff>=0.6", "psutil>=5.9", "py-spy>=0.4"],
        # CUDA-only packages: never needed for the CPU tests.
        "gpu": ["flash-attn>=2.7", "vector-quantize-pytorch>=1.20"],
    },
    entry_points={"console_scripts": ["jala=jala_ds.cli:console"]},
)
