"""Compile-time benchmark, memory against XLA's own accounting, the chip planner, the persistent
compilation cache, and the GPU check's extrapolated text-to-image step."""

import dataclasses
import json

import jax
import pytest

from mcm_jax.benchmarks import compile_bench, gpu_check
from mcm_jax.config import presets
from mcm_jax.run import run_setup
from mcm_jax.train import hardware, memory

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _digits_cd(fsdp: int, devices: int):
    config = compile_bench.step_config(
        presets.digits_mcm("steps=2,method=cd"), scan_blocks=True, batch_per_device=1,
        devices=devices, fsdp=fsdp,
    )
    config.mesh.fsdp_min_size = 1024  # so that the digits network has split parameters
    return config


@pytest.mark.slow
def test_compile_bench_times_the_step_of_abstract_inputs_and_xla_holds_the_estimated_state():
    """On a 2 x 4 data x fsdp mesh of the fake CPU devices: XLA's per-device argument bytes of
    the compiled train step (state, teacher, batch) are mcm_jax.train.memory's state bytes."""
    config = _digits_cd(fsdp=4, devices=8)
    figures = compile_bench.lower_and_compile(config, devices=8, compiler_options=FAST_COMPILE)
    assert figures["lower_s"] > 0 and figures["compile_s"] > 0
    assert figures["compile_cpu_s"] > 0 and figures["dot_generals"] > 0
    state = memory.state_bytes(config)
    batch = sum(
        spec.size * spec.dtype.itemsize
        for spec in run_setup.batch_spec(config, config.training.batch_size).values()
    ) // 8
    xla = figures["xla_bytes"]
    unsharded = memory.state_bytes(compile_bench.step_config(config, True, 1, 8, fsdp=1))
    assert state.total < 0.6 * unsharded.total  # the fsdp split matters here
    assert abs(xla["arguments"] - (state.total + batch)) <= 0.01 * xla["arguments"], (xla, state)
    # The donated state is all of it but the teacher (and two int32 scalars: step, nonfinite_step).
    assert xla["aliased"] == state.total - state.teacher + 8


@pytest.mark.slow
def test_plan_finds_the_fewest_chips_that_hold_the_run():
    config = presets.digits_mcm("steps=2,method=cd,model=tiny")
    config.training.batch_size = 64
    config.mesh.fsdp_min_size = 256  # so that the tiny network has split parameters
    # What each count of chips needs, as the planner adds it up.
    per_example = memory.activation_bytes_per_example(config.copy_and_resolve_references())
    needed = {}
    for devices in (1, 2, 4, 8):
        one = config.copy_and_resolve_references()
        one.teacher.workdir = "unused"
        one.mesh.update(data=1, fsdp=devices)
        held = memory.state_bytes(one)
        needed[devices] = held.total + held.params + 64 // devices * per_example
    assert needed[8] < needed[4] < needed[2] < needed[1]
    chip = lambda name, hbm: dataclasses.replace(hardware.chip_by_name("h100"), name=name,
                                                 hbm_bytes=hbm)
    found = memory.plan(config, (chip("big", needed[1]), chip("four", needed[4]),
                                 chip("tiny", 1)))
    assert found["big"]["devices"] == 1 and found["big"]["batch_per_device"] == 64
    assert found["four"]["devices"] == 4 and found["four"]["batch_per_device"] == 16
    assert found["four"]["needed"] == needed[4]
    assert found["tiny"] is None


def test_the_compilation_cache_is_on_by_default_and_overridable(monkeypatch, tmp_path):
    config = presets.digits_diffusion("model=tiny")
    assert config.compilation_cache_dir  # on by default
    previous = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        config.compilation_cache_dir = str(tmp_path / "cache")
        assert run_setup.enable_compilation_cache(config) == str(tmp_path / "cache")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
        assert run_setup.enable_compilation_cache(config) == str(tmp_path / "env")
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        config.compilation_cache_dir = ""
        assert run_setup.enable_compilation_cache(config) is None
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


def test_gpu_check_extrapolates_the_t2i_step_from_two_middle_depths_and_says_so():
    full = gpu_check.t2i_config(4, dry_run=False)
    assert full.model.middle_blocks == 16 and full.model.scan_blocks
    shallow = gpu_check.Row("t2i_diffusion", "", 4, step_ms=100.0, remat="full")
    deep = gpu_check.Row("t2i_diffusion", "", 4, step_ms=140.0, remat="full")
    row = gpu_check.extrapolated_row(shallow, deep, 2, 4, full)
    assert row.status == "extrapolated" and row.step_ms == pytest.approx(140.0 + 12 * 20.0)
    assert row.img_per_s == pytest.approx(4 / 0.38)
    assert "20.0 ms per middle block" in row.note and "not measured" in row.note
    assert "middle blocks 16" in row.config


@pytest.mark.slow  # compiles and runs the tiny text-to-image step at two depths
def test_gpu_check_dry_run_measures_two_t2i_depths_and_extrapolates(tmp_path):
    path = tmp_path / "gpu_check.json"
    gpu_check.main(["gpu_check", "--dry_run", "--only=t2i_diffusion", f"--json={path}",
                    "--steps=2", "--budget_s=3600"])  # the time budget must not cut the search
    rows = json.loads(path.read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok", "extrapolated"], rows
    assert [r["config"].rsplit(" ", 1)[-1] for r in rows] == ["1", "2", "4"]
    assert all(r["compile_s"] > 0 for r in rows[:2]) and rows[2]["compile_s"] is None
    per_block = rows[1]["step_ms"] - rows[0]["step_ms"]
    assert rows[2]["step_ms"] == pytest.approx(rows[1]["step_ms"] + 2 * per_block)
