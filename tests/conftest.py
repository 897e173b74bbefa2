"""Test setup: the CPU backend with 8 fake devices, so sharding tests see a mesh."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Unoptimised CPU code generation compiles 3-4x faster; test programs are small, so compile time
# dominates their run time.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
# Programs compiled once are reused by later tests and by the training subprocesses they start.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/mcm_jax_test_compilation_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# TensorFlow (input pipeline) must never take an accelerator, and keeps quiet in test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """A TFDS data dir with the bundled digits built (offline) at 16 px, once per test process."""
    import tensorflow_datasets as tfds

    import mcm_jax.datasets.digits  # noqa: F401  (registers the builder)

    path = tmp_path_factory.mktemp("tfds")
    tfds.builder("digits/16x16", data_dir=str(path)).download_and_prepare()
    return path


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end runs in subprocesses (deselect with -m 'not slow')"
    )
