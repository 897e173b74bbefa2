"""Samples a grid from a trained run (a teacher's or a student's workdir, local or gs://) with
mcm_jax.load, and optionally the same noise at several sampler step counts, one row each.

    python examples/sample_from_workdir.py --workdir=/tmp/digits_teacher --out=grid.png
    python examples/sample_from_workdir.py --workdir=/tmp/digits_teacher --out=sweep.png \
        --num=8 --steps=1,2,4,8 --method=ddim
    python examples/sample_from_workdir.py --workdir=/tmp/t2i --out=t2i.png \
        --prompt="a photo of a cat" --prompt="a red car at night"

Without --steps the run's own sampler draws one grid (a student's S-step DDIM; a teacher's
training sampler). docs/api.md explains the API this uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import app, flags

from mcm_jax.run import cli

FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "the run's workdir", required=True, flag_values=FLAGS)
flags.DEFINE_string("out", None, "the PNG to write (local or gs://)", required=True,
                    flag_values=FLAGS)
flags.DEFINE_integer("num", 16, "samples per row (labels cycle through the classes)",
                     flag_values=FLAGS)
flags.DEFINE_multi_string("prompt", [], "prompts of a text-to-image run (one sample each)",
                          flag_values=FLAGS)
flags.DEFINE_list("steps", [], "sampler step counts, one row each (default: the run's own)",
                  flag_values=FLAGS)
flags.DEFINE_enum("method", None, ["ddim", "addim"], "sampler (default: the run's own)",
                  flag_values=FLAGS)
flags.DEFINE_float("guidance", None, "guidance weight (default: the run's own)", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=FLAGS)
flags.DEFINE_integer("ema_index", 0, "EMA parameter set", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "noise seed: sample i's noise depends only on (seed, i)",
                     flag_values=FLAGS)


def main(argv: Sequence[str]) -> None:
    if len(FLAGS(argv)) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    import mcm_jax
    from mcm_jax import images

    run = mcm_jax.load(FLAGS.workdir, step=FLAGS.step, ema_index=FLAGS.ema_index)
    what = {"prompts": FLAGS.prompt} if FLAGS.prompt else {"num": FLAGS.num}
    rows = [int(s) for s in FLAGS.steps] or [None]
    samples = [
        run.sample(**what, steps=steps, method=FLAGS.method, guidance=FLAGS.guidance,
                   seed=FLAGS.seed)
        for steps in rows
    ]
    columns = len(samples[0]) if len(rows) > 1 else None
    images.save_png(FLAGS.out, images.make_grid(np.concatenate(samples), columns=columns))
    print(f"{FLAGS.out}: {len(rows)} x {len(samples[0])} samples of {run.workdir} at step "
          f"{run.step} ({', '.join(str(s or run.own_sampler().steps) for s in rows)} steps)")


if __name__ == "__main__":
    cli.run(main, FLAGS)
