"""Per-step times of the miniature's cpu-scale runs, for the full run's time estimate (README).

    python tools/miniature_timing.py /tmp/miniature_timing

Trains the miniature's teacher for 200 steps and evaluates it at 1 and at 33 DDIM steps (their
difference is the cost of a sampler step over the eval's samples), calibrates its x_var, then trains
and evaluates a 60-step CT and CD student (S = 4) and a PD student (S = 1, four rounds) as `python
-m mcm_jax.experiments.miniature` does. Prints, and writes to <dir>/timing.json, wall and CPU (user
+ sys of the process) seconds: per training step after the first (compilation excluded) and per run.
"""

import json
import sys
import time

from etils import epath

from mcm_jax.eval import calibrate, evaluate
from mcm_jax.experiments import digits_runs, miniature
from mcm_jax.train import train


def main(w: str) -> None:
    scale = miniature.SCALES["cpu"]
    out = {}

    def timed_train(name, config):
        marks, cpu = {}, {}

        def progress(step, total):
            marks.setdefault(step, time.time())
            cpu.setdefault(step, time.process_time())
        start, cpu_start = time.time(), time.process_time()
        train.train(config, str(epath.Path(w) / name), progress=progress)
        end, cpu_end = time.time(), time.process_time()
        n = config.training.num_steps
        out[name + "_train_wall"] = end - start
        out[name + "_train_cpu"] = cpu_end - cpu_start
        out[name + "_train_first_step"] = marks[1] - start
        out[name + "_train_per_step"] = (end - marks[1]) / (n - 1)
        out[name + "_train_cpu_per_step"] = (cpu_end - cpu[1]) / (n - 1)

    def timed_eval(name, config, tag):
        config = config.copy_and_resolve_references()
        config.eval.name = tag
        start, cpu_start = time.time(), time.process_time()
        evaluate.evaluate(config, str(epath.Path(w) / name))
        out[f"{name}_eval_{tag}"] = time.time() - start
        out[f"{name}_eval_{tag}_cpu"] = time.process_time() - cpu_start

    teacher = digits_runs.teacher_config(
        w, model="digits", steps=200, samples=scale.samples, sweep_steps=(1,),
        overrides={"optimizer.decay": "cosine"},
    )
    teacher.eval.sweep_methods = ("ddim",)
    timed_train("teacher", teacher)
    print(json.dumps(out), flush=True)
    timed_eval("teacher", teacher, "one_step")
    teacher.eval.sweep_steps = (33,)
    timed_eval("teacher", teacher, "33_steps")
    start, cpu_start = time.time(), time.process_time()
    calibrate.calibrate(teacher, str(epath.Path(w) / "teacher"))
    out["calibrate"] = time.time() - start
    out["calibrate_cpu"] = time.process_time() - cpu_start
    for method, s in (("ct", 4), ("cd", 4)):
        config = digits_runs.student_config(
            w, str(epath.Path(w) / "teacher"), method=method, sampling_steps=s, model="digits",
            steps=scale.student_steps, samples=scale.samples,
        )
        name = f"{method}_s{s}"
        timed_train(name, config)
        timed_eval(name, config, "own")
    config = digits_runs.pd_config(
        w, str(epath.Path(w) / "teacher"), sampling_steps=1, start_steps=scale.pd_start_steps,
        model="digits", steps=scale.student_steps, samples=scale.samples,
    )
    timed_train("pd_s1", config)
    timed_eval("pd_s1", config, "own")
    print(json.dumps(out, indent=1), flush=True)
    json.dump(out, open(epath.Path(w) / "timing.json", "w"), indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(f"usage: python {sys.argv[0]} WORKDIR")
    main(sys.argv[1])
