"""Times the compiled train step on synthetic batches: img/s, TFLOP/s per device and MFU.

    python -m mcm_jax.benchmarks.train_step_bench --config=configs/imagenet64_mcm.py:steps=8,method=cd \
        --config.training.batch_size=64 --steps=20

Imports no TensorFlow: the batches are random arrays of the model's input shape, and a CD
teacher is the student's initial parameters (same network, same cost).
"""

from __future__ import annotations

import re
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mcm_jax.config import data_config
from mcm_jax.run import run_setup, sharding
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import hardware, train, train_step

FLAGS = flags.FLAGS


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """This process's slice of a random global batch of images in [-1, 1] and labels, and for
    caption data prompts of random lengths (`run_setup.batch_spec`'s layout)."""
    spec = run_setup.batch_spec(config, config.training.batch_size // jax.process_count())
    local = spec["image"].shape[0]
    classes = data_config.num_classes(config.data)
    rng = np.random.default_rng(seed)
    batch = {
        "image": rng.uniform(-1, 1, spec["image"].shape).astype(np.float32),
        "label": rng.integers(0, max(classes, 1), local).astype(np.int32),
    }
    if "text" in spec:
        length = spec["text_mask"].shape[1]
        mask = np.arange(length) < rng.integers(1, length + 1, (local, 1))
        text = rng.normal(size=spec["text"].shape).astype(np.float16)
        batch.update(text=np.where(mask[..., None], text, 0).astype(np.float16), text_mask=mask)
    return batch


def cudnn_attention_calls(hlo_text: str) -> list[str]:
    """The cuDNN fused-attention custom calls of a compiled program's HLO text (e.g.
    "__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"): empty where attention runs in XLA."""
    targets = set(re.findall(r'custom_call_target="([^"]+)"', hlo_text))
    return sorted(
        t for t in targets
        if "cudnn" in t.lower() and any(k in t.lower() for k in ("fmha", "attention", "sdpa"))
    )


def benchmark(
    config: ml_collections.ConfigDict,
    steps: int = 20,
    warmup: int = 3,
    profile_dir: str = "",
    profile_steps: int = 0,
    devices: list | None = None,
) -> dict:
    """Compiles and times `steps` train steps after `warmup`; returns the figures (`mfu` and
    `peak_tflops` only where the peak is known: configured, or the device is in mcm_jax.train.hardware)
    and `cudnn_attention`, the cuDNN attention calls of the compiled step. With `profile_dir`,
    `profile_steps` more steps are traced there (jax.profiler) after the timed ones. `devices`:
    the devices to run on (default: all)."""
    devices = jax.devices() if devices is None else devices
    trainer = train.Trainer(RunSetup.create(config, devices))
    state = trainer.init_state()
    teacher = None
    if config.objective == "mcm":
        shardings = jax.tree.map(lambda a: a.sharding, trainer.abstract_teacher_params)
        teacher = jax.device_put(jax.tree.map(lambda p: p.copy(), state.params), shardings)
    batch = sharding.host_local_to_global(synthetic_batch(config), trainer.setup.mesh)

    start = time.perf_counter()
    compiled = trainer.train_step.lower(state, batch, teacher).compile()
    compile_s = time.perf_counter() - start
    cudnn_calls = cudnn_attention_calls(compiled.as_text())
    for _ in range(warmup):
        state, metrics = compiled(state, batch, teacher)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, teacher)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps
    if profile_dir and profile_steps:
        with jax.profiler.trace(profile_dir):
            for _ in range(profile_steps):
                state, metrics = compiled(state, batch, teacher)
            jax.block_until_ready((state, metrics))

    flops = train_step.train_flops_per_example(config) * config.training.batch_size
    tflops_per_device = flops / step_s / len(devices) / 1e12
    figures = {
        "compile_s": compile_s,
        "step_ms": 1e3 * step_s,
        "images_per_s": config.training.batch_size / step_s,
        "tflops_per_device": tflops_per_device,
        "loss": float(metrics["loss"]),
        "cudnn_attention": cudnn_calls,
    }
    peak = hardware.peak_tflops(config.peak_tflops_per_device, jax.devices()[0].device_kind)
    if peak:
        figures.update(peak_tflops=peak, mfu=tflops_per_device / peak)
    return figures


def main(argv):
    del argv
    config = FLAGS.config
    figures = benchmark(config, FLAGS.steps, FLAGS.warmup)
    device = jax.devices()[0]
    method = config.mcm.method if config.objective == "mcm" else ""
    print(
        f"{device.platform} {device.device_kind} x{jax.device_count()} | {config.model.name} "
        f"{config.objective} {method} | batch {config.training.batch_size} | "
        f"dtype {config.model.dtype} | attention {config.model.attention_impl} "
        f"(cuDNN attention in the compiled step: {', '.join(figures['cudnn_attention']) or 'none'})"
    )
    mfu = (
        f"MFU {100 * figures['mfu']:.1f}% of {figures['peak_tflops']:g} TFLOP/s"
        if "mfu" in figures
        else "MFU unknown (device not in mcm_jax.train.hardware; set --config.peak_tflops_per_device)"
    )
    print(
        f"compile {figures['compile_s']:.1f} s | step {figures['step_ms']:.1f} ms | "
        f"{figures['images_per_s']:.1f} img/s | {figures['tflops_per_device']:.1f} TFLOP/s per "
        f"device | {mfu}"
    )


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).")
    flags.DEFINE_integer("steps", 20, "Timed steps.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
    flags.mark_flags_as_required(["config"])
    app.run(main)
