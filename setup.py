"""blip-jax: BLIP (Li et al. 2022) in JAX/Flax NNX."""

from setuptools import find_packages, setup

setup(
    name="blip-jax",
    version="0.1.0",
    description="BLIP vision-language pretraining, CapFilt and evaluation in JAX/Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",  # jax>=0.7 and flax>=0.12 need Python 3.11
    packages=find_packages(include=["blip_jax", "blip_jax.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "ml_collections>=1.0",
        "numpy>=1.26",
        "pillow>=10",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "sentencepiece>=0.2",
        "huggingface_hub>=0.25",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "simplejpeg>=1.7",  # libjpeg-turbo scaled JPEG decode for the input pipeline
        "opencv-python-headless>=4.8",  # RandAugment warps/LUTs (the original ops are cv2)
        "pycocoevalcap>=1.2",  # caption metrics (needs Java: default-jre-headless)
    ],
    extras_require={
        # torch/transformers are references for parity tests and benchmarks only.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "torch==2.13.0",
            "transformers>=4.45",
            # notebooks/ run in the suite (tests/test_notebooks.py)
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
        "torch": ["torch==2.13.0"],
        "tfds": ["tensorflow-datasets>=4.9"],
    },
    entry_points={"console_scripts": ["blip-jax=blip_jax.cli:main"]},
)
