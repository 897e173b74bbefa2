"""The GPU check: the project's speed figures in one run that fits a short device lease.

    python -m mcm_jax.benchmarks.gpu_check --commit=abc1234 --json=gpu_check.json
    python -m mcm_jax.benchmarks.gpu_check --dry_run     # on a CPU: tiny networks, small batches

`launch/gpu_check.sh` wraps it for a machine that cannot reach a package index. It times, on
synthetic data (no TensorFlow or clu is imported):
- the train step of the diffusion teacher, CT and CD at ImageNet64 small, batch 64, bf16
  (`mcm_jax.benchmarks.train_step_bench`), and ImageNet64 large CD at the largest batch that fits
  for each remat policy, the best of which is marked;
- 8-step student sampling (DDIM, the eval job's sampler) at batch 256;
- Inception features (the FID network, random weights) of 256 uint8 64x64 images, at each
  precision of `inception.PRECISIONS` (the FID path's is marked);
- `batch_sweep`: the ImageNet64 small diffusion and CD steps at growing batches
  (`--sweep_batches`) until one does not fit;
- the train step of the 512 px text-to-image teacher (t2i512, 128-token T5 XXL prompts) on one
  device at batch 4: its 5.6B parameters' state does not fit one device, so the middle stack
  (16 blocks of 4096 channels, most of the parameters) is cut to the deepest of T2I_DEPTHS that
  fits (the memory estimate picks where to start, an out-of-memory error steps down), and
  measured there and at about half that depth. The difference is the time of one middle block;
  the 16-block step is extrapolated from it and labelled so ("extrapolated" status).
Compile and run are timed apart (compile s; step ms and the figures from it).
Each figure comes with img/s, TFLOP/s per device and MFU (`mcm_jax.train.hardware`), the device kind,
batch, commit and jax version, and `cudnn_attention`: whether the compiled program holds cuDNN's
fused-attention custom calls. It prints a markdown table and writes the rows as JSON after each
item, so a run cut short keeps what it measured. `--budget_s` bounds the whole run: an item that
would start past it is skipped, and the large-batch search stops trying bigger batches.

To diagnose, not only measure: `--profile_dir` traces each train step and prints its ten most
expensive operations (name, ms per step, share; `profile_ops`), and `--variants` runs the check
once per A/B variant of VARIANTS, each in its own process (XLA reads its flags, and JAX its
default PRNG, once per process), with the budget split between them, in one table. A variant
may also override fields of every network's config.model (MODEL_OVERRIDES_ENV): `unfused`,
`fused_norms_off` and `split_skip_dense_off` turn the paper networks' fused layers off.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
from absl import app, flags

from mcm_jax import files, models
from mcm_jax.benchmarks import profile_ops, train_step_bench
from mcm_jax.config import config_lib, data_config, presets
from mcm_jax.eval.fid import inception
from mcm_jax.models.blocks import CHECKPOINT_POLICIES
from mcm_jax.models.layers import choose_attention_implementation
from mcm_jax.run import cli, run_setup
from mcm_jax.run.batch_sampler import SamplerSetting
from mcm_jax.train import hardware, memory, train_step

ITEMS = (
    "diffusion_small", "ct_small", "cd_small", "sample8_small", "inception", "batch_sweep",
    "cd_large", "t2i_diffusion",
)
# A variant's overrides of every network's config.model fields, JSON {field: value}.
MODEL_OVERRIDES_ENV = "MCM_JAX_GPU_CHECK_MODEL"
# A/B variants: environment settings of one process (XLA_FLAGS are added to the caller's).
VARIANTS = {
    "baseline": {},
    "cublaslt": {"XLA_FLAGS": "--xla_gpu_enable_cublaslt=true"},
    "triton_gemm_off": {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"},
    "triton_gemm_any": {"XLA_FLAGS": "--xla_gpu_triton_gemm_any=true"},
    "cudnn_gemm_fusion": {"XLA_FLAGS": "--xla_gpu_cudnn_gemm_fusion_level=2"},
    # Dropout bits from another PRNG: threefry (the default) costs many integer ops per bit.
    "prng_rbg": {"JAX_DEFAULT_PRNG_IMPL": "rbg"},
    "prng_unsafe_rbg": {"JAX_DEFAULT_PRNG_IMPL": "unsafe_rbg"},
    # The paper networks' fewer-bytes layers (on by default) off, together and one at a time.
    "unfused": {MODEL_OVERRIDES_ENV: json.dumps({"fused_norms": False, "split_skip_dense": False})},
    "fused_norms_off": {MODEL_OVERRIDES_ENV: json.dumps({"fused_norms": False})},
    "split_skip_dense_off": {MODEL_OVERRIDES_ENV: json.dumps({"split_skip_dense": False})},
}
T2I_DEPTHS = (1, 2, 3, 4, 6, 8, 10, 12, 14, 16)  # middle_blocks the t2i item may try
T2I_BATCH = 4
# The dry run's stand-in: middle depths 1 and 2 measured, 4 extrapolated.
DRY_RUN_T2I_DEPTHS, DRY_RUN_T2I_FULL_DEPTH = (1, 2), 4
# Fastest first, as far as one can tell without a GPU: dots_saveable recomputes only elementwise
# work, "none" recomputes nothing but fits the smallest batch, "full" recomputes every block.
REMAT_ORDER = ("dots_saveable", "none", "dots_with_no_batch_dims_saveable", "full")
assert set(REMAT_ORDER) == {"none", *CHECKPOINT_POLICIES}

FLAGS = flags.FlagValues()  # this command's own (see mcm_jax.run.cli)
flags.DEFINE_bool("dry_run", False, "tiny networks and small batches, for a CPU", flag_values=FLAGS)
flags.DEFINE_list("only", list(ITEMS), f"items to run, of {', '.join(ITEMS)}", flag_values=FLAGS)
flags.DEFINE_string("commit", os.environ.get("MCM_JAX_COMMIT", "unknown"),
                    "the code's commit (default: $MCM_JAX_COMMIT)", flag_values=FLAGS)
flags.DEFINE_string("json", "", "write the rows here as JSON", flag_values=FLAGS)
flags.DEFINE_float("budget_s", 420.0, "seconds for the whole check", flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "timed steps (sampler or Inception calls) per figure",
                     flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, "untimed steps after compiling", flag_values=FLAGS)
flags.DEFINE_list("large_remat", list(REMAT_ORDER), "remat policies to search for cd_large",
                  flag_values=FLAGS)
flags.DEFINE_list("large_batches", ["32", "64", "128", "256", "512", "1024"],
                  "the batches cd_large may try, ascending (the largest that fits is reported)",
                  flag_values=FLAGS)
flags.DEFINE_string("profile_dir", "", "trace --profile_steps steps of each train-step item "
                    "into <profile_dir>/<item> (jax.profiler, for TensorBoard)", flag_values=FLAGS)
flags.DEFINE_integer("profile_steps", 3, "steps per trace (with --profile_dir)", flag_values=FLAGS)
flags.DEFINE_list("variants", [], f"A/B variants to run, each in its own process, of "
                  f"{', '.join(VARIANTS)}", flag_values=FLAGS)
flags.DEFINE_string("variant", "", "the variant this process runs (set by --variants)",
                    flag_values=FLAGS)
flags.DEFINE_list("sweep_batches", ["64", "128", "256", "512", "1024"],
                  "the batches batch_sweep tries, ascending, until one does not fit",
                  flag_values=FLAGS)


@dataclasses.dataclass
class Row:
    """One figure of the table."""

    name: str
    config: str
    batch: int
    img_per_s: float | None = None
    tflops_per_device: float | None = None
    mfu: float | None = None
    cudnn_attention: bool | None = None
    attention_impl: str = ""
    remat: str = ""
    compile_s: float | None = None
    step_ms: float | None = None
    status: str = "ok"  # "ok", "oom", "extrapolated", "skipped: ...", "error: ..."
    best: bool = False
    note: str = ""
    variant: str = ""
    top_ops: list[dict] = dataclasses.field(default_factory=list)  # profile_ops.OpTime fields


def _with_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with this process's variant's model overrides ($MCM_JAX_GPU_CHECK_MODEL), if any."""
    overrides = json.loads(os.environ.get(MODEL_OVERRIDES_ENV) or "{}")
    for field, value in overrides.items():
        if field not in config.model or field == "name":
            raise ValueError(f"{MODEL_OVERRIDES_ENV}: {field!r} is no field of config.model")
        config.model[field] = value
    return config


def _shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The dry run's network: `tiny` at 16 px, computing in bf16 with the fused layers like the
    paper's."""
    paper = config.model
    config_lib.with_model(
        config, "tiny", dtype="bfloat16", fused_norms=paper.fused_norms,
        split_skip_dense=paper.split_skip_dense,
    )
    config.data.resolution = 16
    config.schedule.noise_resolution_low, config.schedule.noise_resolution_high = 8, 16
    return config


def train_config(kind: str, size: str, batch: int, dry_run: bool) -> ml_collections.ConfigDict:
    """The ImageNet64 config of `kind` (diffusion, ct, cd) and `size`, at a global `batch`."""
    if kind == "diffusion":
        config = presets.imagenet_diffusion(64, f"size={size}")
    else:
        config = presets.imagenet_mcm(64, f"steps=8,method={kind},size={size}")
        config.teacher.workdir = "unused: the benchmark's teacher is the initial parameters"
    config = _shrink(config) if dry_run else config
    config.training.batch_size = batch
    return _with_variant(config)


def t2i_config(
    batch: int, dry_run: bool, middle_blocks: int | None = None
) -> ml_collections.ConfigDict:
    """The text-to-image teacher without fsdp (the t2i item runs it on one device) at a global
    `batch`, with `middle_blocks` middle blocks (None: the paper's 16)."""
    config = presets.t2i_diffusion()
    config.mesh.fsdp = 1
    if dry_run:
        config = _shrink(config)
        config.data.update(text_length=8, text_width=16)
        config.model.scan_blocks = True  # as the paper's network
    if middle_blocks is not None:
        config.model.middle_blocks = middle_blocks
    config.training.batch_size = batch
    return _with_variant(config)


def _label(config: ml_collections.ConfigDict) -> str:
    method = f" {config.mcm.method} S={config.mcm.student_steps}" if config.objective == "mcm" else ""
    label = f"{config.model.name} {config.objective}{method} {config.model.dtype}"
    if config.model.name == "t2i512" or config.data.name == "captions":
        label += f", middle blocks {config.model.middle_blocks}"
    return label


def _attention(config: ml_collections.ConfigDict) -> str:
    m = config.model
    return choose_attention_implementation(m.attention_impl, models.validation.DTYPES[m.dtype], m.head_dim)


def _peak(config: ml_collections.ConfigDict) -> float | None:
    return hardware.peak_tflops(config.peak_tflops_per_device, jax.devices()[0].device_kind)


def is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return "resource_exhausted" in text or "out of memory" in text


def train_row(name: str, config: ml_collections.ConfigDict, steps: int, warmup: int,
              profile_dir: str = "", profile_steps: int = 0, devices: list | None = None) -> Row:
    """Times the train step (train_step_bench) on `devices` (default: all); an out-of-memory
    error gives status "oom"."""
    row = Row(name, _label(config), config.training.batch_size, attention_impl=_attention(config),
              remat=config.model.remat)
    try:
        figures = train_step_bench.benchmark(
            config, steps=steps, warmup=warmup, profile_dir=profile_dir,
            profile_steps=profile_steps, devices=devices,
        )
    except Exception as e:  # noqa: BLE001  (only out-of-memory is an answer; the rest is re-raised)
        if not is_oom(e):
            raise
        row.status, row.note = "oom", str(e).splitlines()[0][:200]
        return row
    finally:
        gc.collect()
    row.img_per_s, row.tflops_per_device = figures["images_per_s"], figures["tflops_per_device"]
    row.mfu, row.compile_s = figures.get("mfu"), figures["compile_s"]
    row.step_ms = figures["step_ms"]
    row.cudnn_attention = bool(figures["cudnn_attention"])
    if profile_dir and profile_steps:
        ops = profile_ops.top_ops(profile_dir, profile_steps)
        row.top_ops = [dataclasses.asdict(op) for op in ops]
        print(f"{name}: the most expensive operations of a step\n{profile_ops.table(ops)}",
              flush=True)
    return row


def _timed_calls(fn: Callable[[], jax.Array], steps: int, warmup: int) -> float:
    """Seconds per call of `fn` after `warmup` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def sampling_row(batch: int, steps: int, warmup: int, dry_run: bool) -> Row:
    """8-step DDIM sampling of an ImageNet64 small student (random parameters), eval's sampler."""
    config = train_config("cd", "small", batch, dry_run)
    setup = run_setup.RunSetup.create(config)
    init = jax.jit(lambda rng: run_setup.init_params(setup.model, config, rng),
                   out_shardings=setup.param_shardings)
    params = init(jax.random.PRNGKey(0))
    sample = setup.batch_sampler(SamplerSetting("ddim", 8), seed=0, batch_size=batch)
    start = time.perf_counter()
    compiled = sample.lower(params, 0).compile()
    compile_s = time.perf_counter() - start
    seconds = _timed_calls(lambda: compiled(params, 0), steps, warmup)
    _, _, channels = data_config.image_shape(config.data)
    forward = models.flops_per_example(config.model, config.data.resolution, channels=channels)
    flops = 8 * forward * batch
    tflops = flops / seconds / jax.device_count() / 1e12
    peak = _peak(config)
    return Row(
        "sample8_small", f"{config.model.name} student DDIM 8 steps {config.model.dtype}", batch,
        img_per_s=batch / seconds, tflops_per_device=tflops, mfu=tflops / peak if peak else None,
        cudnn_attention=bool(train_step_bench.cudnn_attention_calls(compiled.as_text())),
        attention_impl=_attention(config), compile_s=compile_s,
    )


def inception_row(batch: int, precision: str, steps: int, warmup: int) -> Row:
    """FID features of `batch` uint8 64x64 images (resized to 299 as pytorch-fid does), random
    weights; TFLOP/s from XLA's cost analysis of the compiled program."""
    net = inception.InceptionV3(precision=precision)
    side = inception.INCEPTION_RESOLUTION
    params = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3)))["params"]
    images = jax.random.randint(jax.random.PRNGKey(1), (batch, 64, 64, 3), 0, 256).astype(jnp.uint8)
    apply = jax.jit(lambda p, x: net.apply({"params": p}, inception.preprocess(x)))
    start = time.perf_counter()
    compiled = apply.lower(params, images).compile()
    compile_s = time.perf_counter() - start
    seconds = _timed_calls(lambda: compiled(params, images), steps, warmup)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    tflops = flops / seconds / jax.device_count() / 1e12 if flops else None
    peak = hardware.peak_tflops(0.0, jax.devices()[0].device_kind)
    return Row(
        f"inception_{precision}", f"FID Inception-v3 float32, precision {precision}", batch,
        img_per_s=batch / seconds, tflops_per_device=tflops,
        mfu=tflops / peak if tflops and peak else None, compile_s=compile_s,
        note="the FID path" if precision == inception.fid_precision() else "not the FID path",
    )


def largest_fitting(batches: Sequence[int], start: int, attempt: Callable[[int], Row],
                    time_left: Callable[[float], bool]) -> list[Row]:
    """The attempts of a search for the largest of the ascending `batches` (or any ascending
    sizes: the t2i item's middle depths) that fits: from index `start` down until one fits, then
    up while they fit and `time_left(cost of the last try)`."""
    rows, index, fitted, tried = [], min(start, len(batches) - 1), None, set()
    while index >= 0:
        began = time.monotonic()
        tried.add(batches[index])
        rows.append(attempt(batches[index]))
        cost = time.monotonic() - began
        if rows[-1].status == "ok":
            fitted = index
            break
        if not time_left(cost):
            return rows
        index -= 1
    while (fitted is not None and fitted + 1 < len(batches) and batches[fitted + 1] not in tried
           and time_left(cost)):
        began = time.monotonic()
        rows.append(attempt(batches[fitted + 1]))
        cost = time.monotonic() - began
        if rows[-1].status != "ok":
            break
        fitted += 1
    return rows


def sweep_rows(batches: Sequence[int], steps: int, warmup: int, deadline: float,
               dry_run: bool) -> list[Row]:
    """The ImageNet64 small diffusion and CD steps at each of the ascending `batches` until one
    does not fit or the time runs out."""
    rows = []
    for kind in ("diffusion", "cd"):
        for batch in batches:
            if time.monotonic() >= deadline:
                break
            config = train_config(kind, "small", batch, dry_run)
            rows.append(train_row(f"{kind}_small_sweep", config, steps, warmup))
            jax.clear_caches()
            if rows[-1].status != "ok":
                break
    return rows


def _memory_limit() -> int | None:
    return (jax.devices()[0].memory_stats() or {}).get("bytes_limit")


def _start_index(config: ml_collections.ConfigDict, batches: Sequence[int]) -> int:
    """The largest batch that `mcm_jax.train.memory`'s estimate fits into the device's memory limit
    (the estimate leaves out XLA's fusions, so it tends to be low: the search goes up from it);
    the smallest batch where the limit is unknown (a CPU)."""
    limit = _memory_limit()
    if not limit:
        return 0
    state = memory.state_bytes(config)  # parameters, optimizer, EMA, teacher; gradients below
    per_example = memory.activation_bytes_per_example(config)
    fits = [i for i, b in enumerate(batches) if state.total + state.params + b * per_example <= limit]
    return fits[-1] if fits else 0


def _t2i_start_index(depths: Sequence[int], batch: int, dry_run: bool) -> int:
    """The deepest of `depths` whose t2i step `mcm_jax.train.memory` fits into the device's memory
    limit (the search corrects it either way); the shallowest where the limit is unknown."""
    limit = _memory_limit()
    if not limit:
        return 0
    fits = []
    for index, depth in enumerate(depths):
        config = t2i_config(batch, dry_run, depth)
        state = memory.state_bytes(config)
        needed = state.total + state.params + batch * memory.activation_bytes_per_example(config)
        if needed <= limit:
            fits.append(index)
    return fits[-1] if fits else 0


def extrapolated_row(shallow: Row, deep: Row, shallow_depth: int, deep_depth: int,
                     full: ml_collections.ConfigDict) -> Row:
    """The step of the `full` config (16 middle blocks) from two measured steps that differ only
    in their middle depth: the time of one middle block is their difference per block, added
    for each block the deeper one lacks. TFLOP/s and MFU from the full step's FLOPs."""
    per_block_ms = (deep.step_ms - shallow.step_ms) / (deep_depth - shallow_depth)
    blocks = full.model.middle_blocks
    step_ms = deep.step_ms + (blocks - deep_depth) * per_block_ms
    batch = full.training.batch_size
    flops = train_step.train_flops_per_example(full) * batch
    tflops = flops / (step_ms / 1e3) / 1e12  # on one device
    peak = _peak(full)
    return Row(
        "t2i_diffusion", _label(full), batch, img_per_s=batch / (step_ms / 1e3),
        tflops_per_device=tflops, mfu=tflops / peak if peak else None,
        cudnn_attention=deep.cudnn_attention, attention_impl=deep.attention_impl,
        remat=deep.remat, step_ms=step_ms, status="extrapolated",
        note=f"{per_block_ms:.1f} ms per middle block, measured at {shallow_depth} and "
        f"{deep_depth} middle blocks; {blocks} blocks extrapolated, not measured",
    )


def t2i_rows(depths: Sequence[int], full_depth: int, batch: int, steps: int, warmup: int,
             deadline: float, dry_run: bool) -> list[Row]:
    """The t2i teacher's step on one device at the deepest of the ascending `depths` that fits and
    at about half that depth, then the step of `full_depth` middle blocks extrapolated from the
    two (or measured, if it fits). Tries that did not fit are listed too."""
    def attempt(depth: int) -> Row:
        row = train_row("t2i_diffusion", t2i_config(batch, dry_run, depth), steps, warmup,
                        devices=jax.devices()[:1])
        jax.clear_caches()
        print(f"  t2i_diffusion {depth} middle blocks: {row.status}"
              + (f", {row.step_ms:.1f} ms per step" if row.step_ms else ""), flush=True)
        return row

    time_left = lambda cost: time.monotonic() + 1.5 * cost < deadline
    tried: dict[int, Row] = {}  # depth -> its row

    def attempt_once(depth: int) -> Row:
        if depth not in tried:
            tried[depth] = attempt(depth)
        return tried[depth]

    rows = largest_fitting(depths, _t2i_start_index(depths, batch, dry_run), attempt_once,
                           time_left)
    fitting = sorted(d for d, r in tried.items() if r.status == "ok")
    full = t2i_config(batch, dry_run, full_depth)
    if not fitting or fitting[-1] == full_depth:
        return rows  # nothing fits, or the full network was measured
    deep = fitting[-1]
    shallow = max([d for d in depths if d <= deep // 2] or [d for d in depths if d < deep] or [0])
    if shallow == 0:
        rows.append(Row("t2i_diffusion", _label(full), batch, status="skipped: no shallower depth"))
        return rows
    if shallow not in tried:
        if not time_left(0.0):
            rows.append(Row("t2i_diffusion", _label(full), batch, status="skipped: time budget"))
            return rows
        rows.append(attempt(shallow))
        tried[shallow] = rows[-1]
    if tried[shallow].status != "ok":
        return rows
    rows.append(extrapolated_row(tried[shallow], tried[deep], shallow, deep, full))
    return rows


def large_rows(policies: Sequence[str], batches: Sequence[int], steps: int, warmup: int,
               deadline: float, dry_run: bool) -> list[Row]:
    """For each remat policy, the largest batch of `batches` at which ImageNet64 large CD fits,
    with its speed; the fastest policy's row is marked `best`. A bigger batch is tried only if
    1.5 times the last try's time is left before `deadline`; policies it leaves no time for are
    listed as skipped (run them with --only=cd_large --large_remat=...)."""
    best_rows = []
    for policy in policies:
        config = train_config("cd", "large", batches[0], dry_run)
        config.model.remat = policy
        if time.monotonic() >= deadline:
            best_rows.append(Row("cd_large", _label(config), 0, remat=policy,
                                 status="skipped: time budget"))
            continue

        def attempt(batch, config=config):
            config.training.batch_size = batch
            row = train_row("cd_large", config, steps, warmup)
            jax.clear_caches()
            print(f"  cd_large remat={policy} batch {batch}: {row.status}"
                  + (f", {row.img_per_s:.1f} img/s" if row.img_per_s else ""), flush=True)
            return row

        tried = largest_fitting(batches, _start_index(config, batches), attempt,
                                lambda cost: time.monotonic() + 1.5 * cost < deadline)
        fits = [r for r in tried if r.status == "ok"]
        if fits:
            row = max(fits, key=lambda r: r.batch)
            larger = [r.batch for r in tried if r.status == "oom" and r.batch > row.batch]
            row.note = (f"batch {min(larger)} did not fit" if larger else
                        "largest batch tried" if row.batch == batches[-1] else
                        "larger batches not tried: time budget")
        else:
            row = tried[-1]
            row.note = f"no batch fits down to {min(r.batch for r in tried)}; " + row.note
        best_rows.append(row)
    timed = [r for r in best_rows if r.img_per_s]
    if timed:
        max(timed, key=lambda r: r.img_per_s).best = True
    return best_rows


def _meta(commit: str, dry_run: bool) -> dict:
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {
        "device_kind": device.device_kind, "platform": device.platform,
        "device_count": jax.device_count(), "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "python": platform.python_version(), "commit": commit, "dry_run": dry_run,
        "memory_limit_bytes": stats.get("bytes_limit"),
        "xla_python_client_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
    }


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def table(meta: dict, rows: Sequence[Row]) -> str:
    """The markdown table of `rows`, under a line naming device, jax and commit."""
    lines = [
        f"{meta['device_kind']} x{meta['device_count']}, jax {meta['jax_version']}, commit "
        f"{meta['commit']}" + (" (dry run: tiny networks)" if meta["dry_run"] else ""),
        "",
        "| name | variant | config | remat | batch | img/s | TFLOP/s | MFU | cudnn_attention "
        "| compile s | step ms | status |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        name = f"{r.name} (best)" if r.best else r.name
        mfu = "" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        cudnn = "" if r.cudnn_attention is None else str(r.cudnn_attention).lower()
        status = r.status + (f" ({r.note})" if r.note else "")
        lines.append(
            f"| {name} | {r.variant} | {r.config} | {r.remat} | {r.batch} | {_fmt(r.img_per_s, '.1f')} | "
            f"{_fmt(r.tflops_per_device, '.1f')} | {mfu} | {cudnn} | {_fmt(r.compile_s, '.0f')} | "
            f"{_fmt(r.step_ms, '.1f')} | {status} |"
        )
    return "\n".join(lines)


def as_json(meta: dict, rows: Sequence[Row]) -> dict:
    """{"meta": ..., "rows": [...]}; every row repeats the device kind, commit and jax version."""
    keep = {k: meta[k] for k in ("device_kind", "commit", "jax_version")}
    return {"meta": meta, "rows": [{**dataclasses.asdict(r), **keep} for r in rows]}


def run(items: Sequence[str], *, commit: str, dry_run: bool, budget_s: float, steps: int,
        warmup: int, large_remat: Sequence[str], large_batches: Sequence[int],
        sweep_batches: Sequence[int] = (), json_path: str = "", profile_dir: str = "",
        profile_steps: int = 0, variant: str = "") -> tuple[dict, list[Row]]:
    """Runs `items` in ITEMS order within `budget_s`; returns (meta, rows)."""
    deadline = time.monotonic() + budget_s
    meta, rows = _meta(commit, dry_run), []
    train_batch, sample_batch, inception_batch = (8, 16, 8) if dry_run else (64, 256, 256)
    profile = lambda name: (os.path.join(profile_dir, name) if profile_dir else "", profile_steps)

    def add(new_rows: list[Row]) -> None:
        for r in new_rows:
            r.variant = variant
        rows.extend(new_rows)
        for r in new_rows:
            print(table(meta, [r]).splitlines()[-1], flush=True)
        if json_path:
            files.write_bytes_atomic(json_path, json.dumps(as_json(meta, rows), indent=1).encode())

    for item in (i for i in ITEMS if i in items):
        if time.monotonic() >= deadline:
            add([Row(item, "", 0, status="skipped: time budget")])
            continue
        if item in ("diffusion_small", "ct_small", "cd_small"):
            config = train_config(item.split("_")[0], "small", train_batch, dry_run)
            add([train_row(item, config, steps, warmup, *profile(item))])
        elif item == "sample8_small":
            add([sampling_row(sample_batch, steps, warmup, dry_run)])
        elif item == "inception":
            for precision in inception.PRECISIONS:
                add([inception_row(inception_batch, precision, steps, warmup)])
        elif item == "batch_sweep":
            add(sweep_rows(sweep_batches, steps, warmup, deadline, dry_run))
        elif item == "cd_large":
            add(large_rows(large_remat, large_batches, max(steps // 2, 2), 1, deadline, dry_run))
        elif item == "t2i_diffusion":
            depths, full_depth = (
                (DRY_RUN_T2I_DEPTHS, DRY_RUN_T2I_FULL_DEPTH) if dry_run
                else (T2I_DEPTHS, presets.t2i_diffusion().model.middle_blocks)
            )
            add(t2i_rows(depths, full_depth, T2I_BATCH, max(steps // 2, 2), 1, deadline, dry_run))
    return meta, rows


def run_variants(variants: Sequence[str], child_flags: list[str], budget_s: float,
                 json_dir: str, profile_dir: str = "") -> list[Row]:
    """Runs the check once per variant, each in its own process with its VARIANTS environment
    and an equal share of `budget_s`; a variant whose process fails is one row saying why."""
    rows = []
    for name in variants:
        env = dict(os.environ)
        for key, value in VARIANTS[name].items():
            env[key] = f"{env.get(key, '')} {value}".strip() if key == "XLA_FLAGS" else value
        json_path = os.path.join(json_dir, f"gpu_check_{name}.json")
        command = [sys.executable, "-m", "mcm_jax.benchmarks.gpu_check", *child_flags,
                   f"--budget_s={budget_s / len(variants)}", f"--json={json_path}",
                   f"--variant={name}"]
        if profile_dir:
            command.append(f"--profile_dir={os.path.join(profile_dir, name)}")
        print(f"variant {name}: {' '.join(f'{k}={v}' for k, v in VARIANTS[name].items())}",
              flush=True)
        done = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
        if os.path.exists(json_path):
            with open(json_path) as f:
                fields = {f.name for f in dataclasses.fields(Row)}
                rows += [Row(**{k: v for k, v in r.items() if k in fields})
                         for r in json.load(f)["rows"]]
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append(Row("variant", "", 0, variant=name,
                            status=f"error: exit {done.returncode}: {last[:200]}"))
    return rows


def main(argv: Sequence[str]) -> None:
    """Runs the check and prints the table; `argv` is the command line, program name first."""
    if len(FLAGS(argv)) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    unknown = set(FLAGS.only) - set(ITEMS)
    if unknown:
        raise app.UsageError(f"--only: unknown {sorted(unknown)}; items: {', '.join(ITEMS)}")
    if set(FLAGS.large_remat) - set(REMAT_ORDER):
        raise app.UsageError(f"--large_remat: each of {', '.join(REMAT_ORDER)}")
    if set(FLAGS.variants) - set(VARIANTS):
        raise app.UsageError(f"--variants: each of {', '.join(VARIANTS)}")
    batches = sorted(int(b) for b in FLAGS.large_batches)
    sweep = sorted(int(b) for b in FLAGS.sweep_batches)
    steps, warmup = FLAGS.steps, FLAGS.warmup
    if FLAGS.dry_run:  # smaller defaults: the CPU is slow
        default = lambda name: FLAGS[name].using_default_value
        batches = [8, 16] if default("large_batches") else batches
        sweep = [8, 16] if default("sweep_batches") else sweep
        steps, warmup = (2 if default("steps") else steps), (1 if default("warmup") else warmup)
    if FLAGS.variants:
        child_flags = [FLAGS[name].serialize() for name in (
            "only", "commit", "steps", "warmup", "large_remat", "large_batches", "sweep_batches",
            "profile_steps", "dry_run",
        )]
        variant_rows = run_variants(
            FLAGS.variants, child_flags, FLAGS.budget_s,
            os.path.dirname(os.path.abspath(FLAGS.json or "gpu_check.json")), FLAGS.profile_dir,
        )
        meta = _meta(FLAGS.commit, FLAGS.dry_run)
        if FLAGS.json:
            files.write_bytes_atomic(FLAGS.json, json.dumps(as_json(meta, variant_rows), indent=1).encode())
        print("\n" + table(meta, variant_rows), flush=True)
        return
    meta, rows = run(
        FLAGS.only, commit=FLAGS.commit, dry_run=FLAGS.dry_run, budget_s=FLAGS.budget_s,
        steps=steps, warmup=warmup, large_remat=FLAGS.large_remat,
        large_batches=batches, sweep_batches=sweep, json_path=FLAGS.json,
        profile_dir=FLAGS.profile_dir, profile_steps=FLAGS.profile_steps, variant=FLAGS.variant,
    )
    print("\n" + table(meta, rows), flush=True)
    if FLAGS.json:
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    cli.run(main, FLAGS)
