"""Entry point: python -m mcm_jax.main --config=configs/<file>.py[:args] --workdir=DIR --mode=train|eval

Thin by design: parses flags, resolves the user's paths (local ones made absolute, gs:// kept),
starts jax.distributed on multi-process launches (mcm_jax.run.distributed: a failing process ends
them all) and hands (config, workdir) to the training loop or the eval job.

A user's mistake ends in one line, `error: <message>`, without a traceback (mcm_jax.run.cli.run):
exit status 2 for a command line that cannot be parsed (a bad flag value, an unknown --config.*
key, a config file that does not load), 1 for a run refused or stopped (a bad config value or
path, an incompatible run or checkpoint, a non-finite loss, a full disk). --verbose, or
MCM_JAX_VERBOSE=1, shows the traceback too. Other errors are bugs and keep their traceback.

The log holds the run's own lines (mcm_jax's and clu's metric lines) and every warning; other
libraries' INFO lines (orbax logs dozens per checkpoint) show only with --verbose.
"""

from __future__ import annotations

import ml_collections
from absl import flags, logging

from mcm_jax import files, paths
from mcm_jax.run import cli

FLAGS = flags.FLAGS
cli.define_main_flags(FLAGS)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
    """Resolves the paths, starts jax.distributed where launched so, and trains or evaluates."""
    workdir = paths.resolve_workdir(workdir)
    paths.resolve_config_paths(config)
    import jax

    from mcm_jax import log_filter, runlocal
    from mcm_jax.run import distributed, multihost, run_setup

    distributed.start()
    multihost.name_process_in_logs()
    if not cli.verbose():
        log_filter.quiet_libraries()
    runlocal.prepare(config, workdir, mode)
    logging.info("process %d of %d, %d local devices of %d", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    logging.info("compilation cache: %s", run_setup.enable_compilation_cache(config) or "off")
    try:
        if mode == "train":
            from mcm_jax.train import train

            train.train(config, workdir)
        else:
            from mcm_jax.eval import evaluate

            evaluate.evaluate(config, workdir)
    except Exception as error:
        if not files.no_space_left(error):
            raise
        raise files.DiskFullError(error, workdir, *_rerun_after(mode, workdir)) from error


def _rerun_after(mode: str, workdir: str) -> tuple[str, str]:
    """(the job, what its rerun does) for the message of a job stopped by a full disk."""
    if mode == "eval":
        return "the eval job", "it continues from the samples it saved"
    from mcm_jax.run import resume_config

    step = resume_config.latest_saved_step(workdir)
    if step is None:
        return "training", "no checkpoint was saved yet, so it starts again"
    return "training", f"it resumes from the last checkpoint, step {step}"


def main(argv: list[str]) -> None:
    del argv
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
    cli.run(main)
