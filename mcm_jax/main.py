"""Entry point: python -m mcm_jax.main --config=configs/<file>.py[:args] --workdir=DIR --mode=train|eval

Thin by design: parses flags, resolves the user's paths (local ones made absolute, gs:// kept),
starts jax.distributed on multi-process launches and hands (config, workdir) to the training loop
or the eval job.

A user's mistake ends in one line, `error: <message>`, without a traceback (mcm_jax.cli.run):
exit status 2 for a command line that cannot be parsed (a bad flag value, an unknown --config.*
key, a config file that does not load), 1 for a run refused or stopped (a bad config value or
path, an incompatible run or checkpoint, a non-finite loss). --verbose, or MCM_JAX_VERBOSE=1,
shows the traceback too. Other errors are bugs and keep their traceback.
"""

from __future__ import annotations

import os

import ml_collections
from absl import flags, logging

from mcm_jax import cli, main_flags, paths

FLAGS = flags.FLAGS
main_flags.define_flags(FLAGS)


def _launched_processes() -> int:
    """How many processes SLURM or a Cloud TPU slice started (1 for a plain launch).

    SLURM counts only inside an srun step (SLURM_STEP_ID): a salloc or batch shell also has
    SLURM_NTASKS, and a process started there alone would wait forever for its peers.
    """
    env = os.environ
    if "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        return int(env["SLURM_NTASKS"])
    if env.get("TPU_WORKER_HOSTNAMES"):
        return len(env["TPU_WORKER_HOSTNAMES"].split(","))
    return 1


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
    """Resolves the paths, starts jax.distributed where launched so, and trains or evaluates."""
    workdir = paths.resolve_workdir(workdir)
    paths.resolve_config_paths(config)
    import jax

    if "JAX_NUM_PROCESSES" in os.environ:  # explicit local or custom launch
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif _launched_processes() > 1:
        jax.distributed.initialize()  # SLURM and Cloud TPU: detected from the environment
    from mcm_jax import multihost, runlocal

    multihost.name_process_in_logs()
    runlocal.prepare(config, workdir, mode)
    logging.info("process %d of %d, %d local devices of %d", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    if mode == "train":
        from mcm_jax import train

        train.train(config, workdir)
    else:
        from mcm_jax.eval import evaluate

        evaluate.evaluate(config, workdir)


def main(argv: list[str]) -> None:
    del argv
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
    cli.run(main)
