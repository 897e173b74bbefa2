"""Compile time of the paper's train steps, scanned against unrolled blocks, and XLA's memory.

    python -m mcm_jax.benchmarks.compile_bench [--runs=t2i512_cd,imagenet64_large_cd]
        [--variants=scanned,unrolled] [--batch_per_device=2] [--json=compile_bench.jsonl]

For each run (PAPER_RUNS: ImageNet64/128 small/large diffusion and CD, t2i512 diffusion and CD)
and each block layout (model.scan_blocks on: "scanned"; off: "unrolled"), the train step as
training jits it (mcm_jax.train.train.Trainer: shardings, donated state) is lowered and compiled for
abstract inputs (jax.ShapeDtypeStruct; nothing is allocated) on one device of the default
backend, at `--batch_per_device`; `lower()` and `compile()` are timed apart, in wall-clock and
in CPU seconds. Each measurement
runs in a fresh subprocess (no cache of an earlier trace or compile helps it, the persistent
compilation cache is off) and appends one JSON line: the times, the size of the lowered program
(StableHLO lines, dot_general ops), XLA's `compiled.memory_analysis()` (arguments, outputs,
aliased, temporaries) and, for comparison, mcm_jax.train.memory's estimate of the same step (state,
gradients, activations under the config's remat policy). The table: docs/compile.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable

import jax
import ml_collections
from absl import app, flags

from mcm_jax.config import presets
from mcm_jax.run import run_setup, sharding
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import memory, train

VARIANTS = {"scanned": True, "unrolled": False}
PAPER_RUNS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "imagenet64_small_diffusion": lambda: presets.imagenet_diffusion(64, "size=small"),
    "imagenet64_small_cd": lambda: presets.imagenet_mcm(64, "method=cd,size=small"),
    "imagenet64_large_diffusion": lambda: presets.imagenet_diffusion(64, "size=large"),
    "imagenet64_large_cd": lambda: presets.imagenet_mcm(64, "method=cd,size=large"),
    "imagenet128_small_diffusion": lambda: presets.imagenet_diffusion(128, "size=small"),
    "imagenet128_small_cd": lambda: presets.imagenet_mcm(128, "method=cd,size=small"),
    "imagenet128_large_diffusion": lambda: presets.imagenet_diffusion(128, "size=large"),
    "imagenet128_large_cd": lambda: presets.imagenet_mcm(128, "method=cd,size=large"),
    "t2i512_diffusion": presets.t2i_diffusion,
    "t2i512_cd": presets.t2i_mcm,
}
FLAGS = flags.FLAGS


def step_config(
    config: ml_collections.ConfigDict, scan_blocks: bool, batch_per_device: int,
    devices: int = 1, fsdp: int = 1,
) -> ml_collections.ConfigDict:
    """`config` with the block layout, a global batch of batch_per_device per device and a
    (devices / fsdp, fsdp) mesh; a CD student's teacher is its own network (nothing is read)."""
    config = config.copy_and_resolve_references()
    config.model.scan_blocks = scan_blocks
    config.training.batch_size = batch_per_device * devices
    config.mesh.update(data=-1, fsdp=fsdp)
    if config.objective == "mcm":
        config.teacher.workdir = "(not read: the step is only compiled)"
    return config


def lower_and_compile(
    config: ml_collections.ConfigDict, devices: int = 1, compiler_options: dict | None = None
) -> dict:
    """Lowers and compiles the train step of `config` for abstract inputs on the first
    `devices` devices (XLA's bytes are per device); returns the seconds of each (wall clock, and
    CPU time of every thread of this process, which other programs on a shared machine do not
    inflate), the lowered program's size and XLA's memory."""
    trainer = train.Trainer(RunSetup.create(config, devices=jax.devices()[:devices]))
    mesh = trainer.setup.mesh
    batch = {
        key: jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding.batch_sharding(mesh))
        for key, spec in run_setup.batch_spec(config, config.training.batch_size).items()
    }
    teacher = trainer.abstract_teacher_params if config.objective == "mcm" else None
    start, start_cpu = time.perf_counter(), time.process_time()
    lowered = trainer.train_step.lower(trainer.abstract_state, batch, teacher)
    lower_s, lower_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    text = lowered.as_text()
    start, start_cpu = time.perf_counter(), time.process_time()
    compiled = lowered.compile(compiler_options)
    compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    analysis = compiled.memory_analysis()
    return {
        "lower_s": lower_s,
        "compile_s": compile_s,
        "lower_cpu_s": lower_cpu_s,
        "compile_cpu_s": compile_cpu_s,
        "stablehlo_lines": text.count("\n"),
        "dot_generals": text.count("stablehlo.dot_general"),
        "xla_bytes": {
            "arguments": analysis.argument_size_in_bytes,
            "outputs": analysis.output_size_in_bytes,
            "aliased": analysis.alias_size_in_bytes,
            "temporaries": analysis.temp_size_in_bytes,
        },
    }


def estimated_bytes(config: ml_collections.ConfigDict, devices: int = 1) -> dict:
    """mcm_jax.train.memory's per-device bytes of the same step: the state it holds between steps
    (and a CD teacher), and the gradients plus activations it needs during the step."""
    result = memory.report(config, num_devices=devices, remats=(config.model.remat,))
    state = result["state"]
    return {
        "state": state.total,
        "gradients": state.params,
        "activations": result["activations"][config.model.remat],
    }


def measure(run: str, variant: str, batch_per_device: int, with_estimate: bool) -> dict:
    """One JSON record: the run, layout, backend, and the figures of lower_and_compile."""
    config = step_config(PAPER_RUNS[run](), VARIANTS[variant], batch_per_device)
    device = jax.devices()[0]
    record = {
        "run": run,
        "variant": variant,
        "backend": f"{device.platform} {device.device_kind}",
        "batch_per_device": batch_per_device,
        "remat": config.model.remat,
        **lower_and_compile(config),
    }
    if with_estimate:
        record["estimated_bytes"] = estimated_bytes(config)
    return record


def main(argv):
    del argv
    if FLAGS.one:  # the subprocess of one measurement
        run, variant = FLAGS.runs[0], FLAGS.variants[0]
        record = measure(run, variant, FLAGS.batch_per_device, FLAGS.estimate)
        print(json.dumps(record), flush=True)
        return
    for run in FLAGS.runs:
        if run not in PAPER_RUNS:
            raise app.UsageError(f"--runs: {run!r} is not one of {', '.join(PAPER_RUNS)}")
    for variant in FLAGS.variants:
        if variant not in VARIANTS:
            raise app.UsageError(f"--variants: {variant!r} is not one of {', '.join(VARIANTS)}")
    for run in FLAGS.runs:
        for variant in FLAGS.variants:
            command = [
                sys.executable, "-m", "mcm_jax.benchmarks.compile_bench", "--one",
                f"--runs={run}", f"--variants={variant}",
                f"--batch_per_device={FLAGS.batch_per_device}",
                f"--estimate={FLAGS.estimate and variant == 'scanned'}",
            ]
            env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode:
                print(f"{run} {variant}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            record = done.stdout.strip().splitlines()[-1]
            with open(FLAGS.json, "a") as out:
                out.write(record + "\n")
            r = json.loads(record)
            print(
                f"{run:28s} {variant:8s} lower {r['lower_s']:7.1f} s  compile "
                f"{r['compile_s']:8.1f} s (CPU {r['lower_cpu_s']:.1f} s, "
                f"{r['compile_cpu_s']:.1f} s)  {r['stablehlo_lines']} lines, "
                f"{r['dot_generals']} dots",
                flush=True,
            )


if __name__ == "__main__":
    flags.DEFINE_list("runs", list(PAPER_RUNS), f"Runs to compile: {', '.join(PAPER_RUNS)}.")
    flags.DEFINE_list("variants", list(VARIANTS), "Block layouts: scanned, unrolled.")
    flags.DEFINE_integer("batch_per_device", 2, "Per-device batch of the compiled step.",
                         lower_bound=1)
    flags.DEFINE_bool("estimate", True, "Also record mcm_jax.train.memory's estimate (scanned only).")
    flags.DEFINE_string("json", "compile_bench.jsonl", "File the JSON lines are appended to.")
    flags.DEFINE_bool("one", False, "Internal: measure the first run and variant here.")
    app.run(main)
