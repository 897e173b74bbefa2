r"""aDDIM calibration: a teacher's posterior variance x_var(t) measured on data.

docs/method.md §3 (b); the paper's section 3.2 and Algorithm 3.

    python -m mcm_jax.eval.calibrate --config=configs/<file>.py[:args] --workdir=<teacher workdir> \
        [--output=<path>.npz]

For t on a uniform grid of eval.calibration_times points in [0, 1], noises eval.calibration_batches
global batches of eval.calibration_batch_size examples (split eval.calibration_split, default
data.eval_split) to z_t = α_t x + σ_t ε, denoises them with the teacher's EMA parameters
(eval.step, eval.ema_index; conditional on the true labels) and records
x_var(t) = η · mean ‖x − x̂(z_t)‖²/d with η = eval.calibration_eta. The table (npz: times,
x_vars, eta, step, num_examples) goes to <workdir>/addim_x_var_step<step>.npz unless --output says
otherwise; the eval job's aDDIM uses it through config.eval.x_var_table. Tables are read and
written through etils.epath, so workdir and --output may be local or gs://.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from mcm_jax import files, paths
from mcm_jax.config import data_config
from mcm_jax.config import eval_config
from mcm_jax.method import conditioning, diffusion, samplers
from mcm_jax.run import checkpointing, sharding
from mcm_jax.run.run_setup import RunSetup

TABLE_KEYS = ("times", "x_vars")


def table_path(workdir: epath.PathLike, step: int) -> str:
    """Where `calibrate` writes the table of `step` by default: inside the teacher's workdir."""
    return str(epath.Path(workdir) / f"addim_x_var_step{step}.npz")


def load_x_var_table(path: epath.PathLike) -> samplers.XVarFn:
    """The aDDIM x_var function of a calibration table (config.eval.x_var_table)."""
    table = files.read_npz_members(
        path, TABLE_KEYS, what="config.eval.x_var_table",
        hint="make one with python -m mcm_jax.eval.calibrate --config=<the teacher's config> "
        "--workdir=<teacher workdir>",
    )
    return samplers.table_x_var_fn(table["times"], table["x_vars"])


def save_x_var_table(
    path: epath.PathLike, times: np.ndarray, x_vars: np.ndarray, *, eta: float, step: int,
    num_examples: int,
) -> None:
    """Writes a calibration table (atomically) for load_x_var_table, with how it was measured."""
    files.save_npz(
        path, times=times, x_vars=x_vars, eta=eta, step=step, num_examples=num_examples
    )


def _check(config: ml_collections.ConfigDict, num_devices: int) -> None:
    e = config.eval
    if config.objective != "diffusion":
        raise ValueError(
            f"config.objective: calibration measures a diffusion teacher, got {config.objective!r}"
        )
    if not 0 < e.calibration_eta <= 1:
        raise ValueError(f"config.eval.calibration_eta: must be in (0, 1], got {e.calibration_eta}")
    eval_config.check_ema_index(config)
    if e.calibration_times < 2:
        raise ValueError(f"config.eval.calibration_times: must be >= 2, got {e.calibration_times}")
    if e.calibration_batches < 1:
        raise ValueError(
            f"config.eval.calibration_batches: must be >= 1, got {e.calibration_batches}"
        )
    if e.calibration_batch_size < 1 or e.calibration_batch_size % num_devices:
        raise ValueError(
            f"config.eval.calibration_batch_size: {e.calibration_batch_size} must be a positive "
            f"multiple of the {num_devices} devices"
        )


def make_error_sums(setup: RunSetup, times: np.ndarray):
    """jitted (params, image, cond, mask, rng) -> (sums, count): per t, the sum over the real
    examples (mask) of ‖x − x̂(z_t)‖²/d, one t at a time (lax.map); batch split over the mesh.
    cond is the batch's condition (`conditioning.from_batch`): label, and prompt for text data."""
    schedule, model_fn = setup.schedule, setup.model_fn
    num_classes = data_config.num_classes(setup.config.data)

    def error_sums(params, image, cond, mask, rng):
        if not num_classes:  # unconditional in the classes: the null label
            label, text = conditioning.model_kwargs(cond)
            cond = conditioning.from_batch({"label": jnp.zeros_like(label), **text})

        def at_time(index_and_t):
            index, t = index_and_t
            t = jnp.full(image.shape[:1], t, jnp.float32)
            alpha, sigma = schedule.alpha_sigma(t)
            noise = jax.random.normal(jax.random.fold_in(rng, index), image.shape)
            expand = lambda a: diffusion.expand_to(a, image)
            z_t = expand(alpha) * image + expand(sigma) * noise
            x_hat = model_fn(params, z_t, t, cond, False, None)
            return jnp.sum(jnp.where(mask, diffusion.per_example_mean((image - x_hat) ** 2), 0.0))

        sums = jax.lax.map(at_time, (jnp.arange(len(times)), jnp.asarray(times, jnp.float32)))
        return sums, jnp.sum(mask)

    return jax.jit(error_sums)


def calibrate(config: ml_collections.ConfigDict, workdir: str, output: str | None = None) -> str:
    """Measures and writes the calibration table of the teacher in `workdir`; returns its path."""
    from mcm_jax.data import input_pipeline  # TensorFlow only here

    e = config.eval
    _check(config, jax.device_count())
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    step = checkpointing.resolve_step(ckpt, e.step, workdir)
    setup = RunSetup.create(config)
    ema = ckpt.restore_ema_params(step, setup.abstract_ema_params())
    ckpt.close()
    params = ema[e.ema_index]
    times = np.linspace(0.0, 1.0, e.calibration_times)
    error_sums = make_error_sums(setup, times)
    batches = input_pipeline.create_eval_iterator(
        config.data, global_batch_size=e.calibration_batch_size,
        split=e.calibration_split or None,
    )
    sums, count = np.zeros(len(times)), 0
    for index, batch in zip(range(e.calibration_batches), batches):
        batch = sharding.host_local_to_global(batch, setup.mesh)
        rng = jax.random.fold_in(jax.random.PRNGKey(e.seed), index)
        batch_sums, batch_count = error_sums(
            params, batch["image"], conditioning.from_batch(batch), batch["mask"], rng
        )
        sums += np.asarray(batch_sums)
        count += int(batch_count)
    x_vars = e.calibration_eta * sums / count
    path = output or table_path(workdir, step)
    if jax.process_index() == 0:
        save_x_var_table(
            path, times, x_vars, eta=e.calibration_eta, step=step, num_examples=count
        )
    logging.info(
        "aDDIM calibration of step %d on %d examples, written to %s: %s", step, count, path,
        " ".join(f"{t:.3f}:{v:.4g}" for t, v in zip(times, x_vars)),
    )
    return path


def _main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    paths.resolve_config_paths(args.config)
    output = paths.resolve(args.output) if args.output else None
    print(calibrate(args.config, paths.resolve_workdir(args.workdir), output))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "the teacher's experiment config (path[:arg])")
    flags.DEFINE_string("workdir", None, "the teacher's workdir")
    flags.DEFINE_string("output", None, "table path; default <workdir>/addim_x_var_step<step>.npz")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_main)
