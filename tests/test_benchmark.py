"""The train-step benchmark runs without TensorFlow and reports consistent figures."""

import subprocess
import sys

import pytest

from mcm_jax import benchmark, models, presets, train_step


def test_benchmark_module_imports_no_tensorflow():
    code = "import sys, mcm_jax.benchmark, mcm_jax.train; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_benchmark_figures():
    config = presets.digits_mcm("steps=2,method=ct,model=tiny")
    config.teacher.workdir = "unused"
    config.training.batch_size = 16
    figures = benchmark.benchmark(config, steps=2, warmup=1)
    assert figures["step_ms"] > 0
    assert figures["images_per_s"] == pytest.approx(16 / (figures["step_ms"] / 1e3))
    assert "mfu" not in figures  # the CPU has no known peak
    config.peak_tflops_per_device = 0.5
    figures = benchmark.benchmark(config, steps=2, warmup=1)
    assert figures["mfu"] == pytest.approx(figures["tflops_per_device"] / 0.5)


def test_train_flops_count_every_forward_pass():
    config = presets.digits_mcm("steps=2,method=cd,model=tiny")
    forward = models.flops_per_example(config.model, config.data.resolution, channels=1)  # digits
    assert train_step.train_flops_per_example(config) == pytest.approx(5 * forward)  # 3 + reference + teacher
    config.mcm.guidance_weight = 1.0
    assert train_step.train_flops_per_example(config) == pytest.approx(6 * forward)
    config.mcm.method, config.mcm.guidance_weight = "ct", 0.0
    assert train_step.train_flops_per_example(config) == pytest.approx(4 * forward)
    config.objective = "diffusion"
    assert train_step.train_flops_per_example(config) == pytest.approx(3 * forward)
