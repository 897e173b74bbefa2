"""The train-step benchmark runs without TensorFlow and reports consistent figures."""

import subprocess
import sys

import pytest

from configs import digits_mcm
from mcm_jax import benchmark


def test_benchmark_module_imports_no_tensorflow():
    code = "import sys, mcm_jax.benchmark, mcm_jax.train; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_benchmark_figures():
    config = digits_mcm.get_config("steps=2,method=cd,model=tiny")
    config.teacher.workdir = "unused"
    config.training.batch_size = 16
    figures = benchmark.benchmark(config, steps=2, warmup=1)
    assert figures["step_ms"] > 0
    assert figures["images_per_s"] == pytest.approx(16 / (figures["step_ms"] / 1e3))
    assert figures["mfu"] == pytest.approx(
        figures["tflops_per_device"] / config.peak_tflops_per_device
    )
