"""Entry point: python -m mcm_jax.main --config=configs/<file>.py[:args] --workdir=DIR --mode=train|eval

Thin by design: parses flags, starts jax.distributed on multi-process launches and hands (config, workdir) to the training loop or the eval job.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train, or run the eval job.")
flags.mark_flags_as_required(["config", "workdir"])


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


def main(argv):
    del argv
    import jax

    if "JAX_NUM_PROCESSES" in os.environ:  # explicit local or custom launch
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif _launched_processes() > 1:
        jax.distributed.initialize()  # SLURM and Cloud TPU: detected from the environment
    logging.info("process %d of %d, %d local devices of %d", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    config = FLAGS.config
    if FLAGS.mode == "train":
        from mcm_jax import train

        train.train_and_evaluate(config, FLAGS.workdir)
    else:
        from mcm_jax import evaluate

        evaluate.evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
