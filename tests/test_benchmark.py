"""The train-step benchmark runs without TensorFlow and reports consistent figures."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from mcm_jax import models
from mcm_jax.benchmarks import gpu_check, profile_ops, train_step_bench
from mcm_jax.config import presets
from mcm_jax.train import train_step


def test_benchmark_module_imports_no_tensorflow():
    code = (
        "import sys, mcm_jax.benchmarks.train_step_bench, mcm_jax.train.train; "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_benchmark_figures():
    config = presets.digits_mcm("steps=2,method=ct,model=tiny")
    config.teacher.workdir = "unused"
    config.training.batch_size = 16
    figures = train_step_bench.benchmark(config, steps=2, warmup=1)
    assert figures["step_ms"] > 0
    assert figures["images_per_s"] == pytest.approx(16 / (figures["step_ms"] / 1e3))
    assert "mfu" not in figures  # the CPU has no known peak
    config.peak_tflops_per_device = 0.5
    figures = train_step_bench.benchmark(config, steps=2, warmup=1)
    assert figures["mfu"] == pytest.approx(figures["tflops_per_device"] / 0.5)


def test_train_flops_count_every_forward_pass():
    config = presets.digits_mcm("steps=2,method=cd,model=tiny")
    forward = models.flops_per_example(config.model, config.data.resolution, channels=1)  # digits
    assert train_step.train_flops_per_example(config) == pytest.approx(5 * forward)  # 3 + reference + teacher
    config.mcm.guidance_weight = 1.0
    assert train_step.train_flops_per_example(config) == pytest.approx(6 * forward)
    config.mcm.method, config.mcm.guidance_weight = "ct", 0.0
    assert train_step.train_flops_per_example(config) == pytest.approx(4 * forward)
    config.mcm.method = "pd"  # 3 + the teacher's two DDIM steps, each twice when guided
    assert train_step.train_flops_per_example(config) == pytest.approx(5 * forward)
    config.mcm.guidance_weight = 1.0
    assert train_step.train_flops_per_example(config) == pytest.approx(7 * forward)
    config.mcm.guidance_weight = 0.0
    config.objective = "diffusion"
    assert train_step.train_flops_per_example(config) == pytest.approx(3 * forward)


# --- the GPU check (mcm_jax.benchmarks.gpu_check, launch/gpu_check.sh) ---

ROW_FIELDS = {"name", "config", "batch", "img_per_s", "tflops_per_device", "mfu", "device_kind",
              "commit", "jax_version", "cudnn_attention"}


def test_gpu_check_imports_no_tensorflow_or_clu():
    # The GPU image has neither and TensorFlow is too large to carry: the check must not need them.
    code = (
        "import sys; sys.modules.update(tensorflow=None, tensorflow_datasets=None, clu=None); "
        "import mcm_jax.benchmarks.gpu_check"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow  # compiles every item's program on the tiny network
def test_gpu_check_dry_run_table_and_json(tmp_path, capsys):
    path = tmp_path / "gpu_check.json"
    gpu_check.main([
        "gpu_check", "--dry_run", "--only=diffusion_small,cd_large", "--large_remat=full",
        "--large_batches=8", f"--json={path}", "--commit=abc1234", "--steps=1",
        f"--profile_dir={tmp_path / 'traces'}", "--profile_steps=1",
    ])
    result = json.loads(path.read_text())
    assert result["meta"]["commit"] == "abc1234" and result["meta"]["dry_run"] is True
    rows = result["rows"]
    assert [r["name"] for r in rows] == ["diffusion_small", "cd_large"]
    for row in rows:
        assert ROW_FIELDS <= set(row) and row["status"] == "ok", row
        assert row["img_per_s"] > 0 and row["device_kind"] == result["meta"]["device_kind"]
        assert row["cudnn_attention"] is False  # a CPU runs attention in XLA
    assert rows[0]["batch"] == 8 and rows[0]["config"] == "tiny diffusion bfloat16"
    assert rows[1]["batch"] == 8 and rows[1]["remat"] == "full" and rows[1]["best"]
    ops = rows[0]["top_ops"]  # the profiled diffusion step's most expensive operations
    assert len(ops) == 10 and all(op["ms_per_step"] > 0 for op in ops)
    assert [op["share"] for op in ops] == sorted((op["share"] for op in ops), reverse=True)
    assert 0 < sum(op["share"] for op in ops) <= 1
    printed = capsys.readouterr().out
    assert "| name | variant | config | remat | batch | img/s | TFLOP/s | MFU |" in printed
    assert "| cd_large (best) |  | tiny mcm cd S=8 bfloat16 | full | 8 |" in printed
    assert "diffusion_small: the most expensive operations of a step\n| op | ms/step | share |" in printed


def test_top_ops_of_a_trace(tmp_path):
    matmul = jax.jit(lambda a: jnp.tanh(a @ a).sum())
    a = jnp.ones((128, 128))
    matmul(a).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(2):
            matmul(a).block_until_ready()
    ops = profile_ops.top_ops(str(tmp_path), steps=2)
    assert ops and all(op.ms_per_step > 0 for op in ops)
    assert sum(op.share for op in ops) == pytest.approx(1.0)  # all of them: fewer than 10 ops
    with pytest.raises(FileNotFoundError, match="no jax.profiler trace"):
        profile_ops.top_ops(str(tmp_path / "empty"), steps=1)


def test_a_variant_runs_in_its_own_process_with_its_environment(tmp_path, monkeypatch):
    """A variant's XLA_FLAGS reach its process: an unknown flag fails it, in one error row."""
    monkeypatch.setitem(gpu_check.VARIANTS, "bogus_flag", {"XLA_FLAGS": "--xla_no_such_flag=1"})
    rows = gpu_check.run_variants(
        ["bogus_flag"], ["--dry_run", "--only=diffusion_small"], 60.0, str(tmp_path)
    )
    assert len(rows) == 1 and rows[0].variant == "bogus_flag", rows
    assert rows[0].status.startswith("error: exit ") and "xla_no_such_flag" in rows[0].status


def test_a_variant_overrides_every_networks_model_fields(monkeypatch):
    """The fused-layers variants reach each network of the check (the dry run's tiny one
    included, which keeps the paper network's settings); a field the model lacks fails."""
    assert gpu_check.train_config("cd", "small", 8, dry_run=True).model.fused_norms  # the paper's
    for name, expected in (("unfused", (False, False)), ("fused_norms_off", (False, True)),
                           ("split_skip_dense_off", (True, False))):
        for key, value in gpu_check.VARIANTS[name].items():
            monkeypatch.setenv(key, value)
        for config in (gpu_check.train_config("diffusion", "small", 64, dry_run=False),
                       gpu_check.train_config("cd", "small", 8, dry_run=True),
                       gpu_check.t2i_config(4, dry_run=True, middle_blocks=1)):
            assert (config.model.fused_norms, config.model.split_skip_dense) == expected, name
    monkeypatch.setenv(gpu_check.MODEL_OVERRIDES_ENV, '{"fused_norm": false}')
    with pytest.raises(ValueError, match="MCM_JAX_GPU_CHECK_MODEL: 'fused_norm' is no field"):
        gpu_check.train_config("cd", "small", 8, dry_run=True)


def _attempts(fits_up_to: int, log: list):
    def attempt(batch):
        log.append(batch)
        return gpu_check.Row("cd_large", "", batch, status="ok" if batch <= fits_up_to else "oom")

    return attempt


@pytest.mark.parametrize(
    "fits_up_to, start, tried",
    [
        (128, 2, [128, 256]),  # the estimate's batch fits, the next one not
        (512, 1, [64, 128, 256, 512]),  # the estimate was low: go up while they fit
        (32, 2, [128, 64, 32]),  # too high: go down until one fits
        (16, 1, [64, 32]),  # nothing fits
    ],
)
def test_gpu_check_largest_batch_search(fits_up_to, start, tried):
    log = []
    rows = gpu_check.largest_fitting([32, 64, 128, 256, 512], start, _attempts(fits_up_to, log),
                                     time_left=lambda cost: True)
    assert log == tried and [r.batch for r in rows] == tried


def test_gpu_check_largest_batch_search_stops_at_the_time_budget():
    log = []
    gpu_check.largest_fitting([32, 64, 128], 0, _attempts(128, log), time_left=lambda cost: False)
    assert log == [32]


def test_gpu_check_finds_cudnn_attention_in_hlo_text():
    hlo = (
        '%a = custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmax"\n'
        '%b = custom-call(%x), custom_call_target="__cublas$gemm"\n'
        '%c = custom-call(%g), custom_call_target="__cudnn$fmhaSoftmaxBackward"\n'
    )
    assert train_step_bench.cudnn_attention_calls(hlo) == [
        "__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"
    ]
    assert train_step_bench.cudnn_attention_calls(hlo.replace("fmha", "conv")) == []
    assert gpu_check.is_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1.2GiB"))
    assert not gpu_check.is_oom(ValueError("config.model.remat: bad"))
