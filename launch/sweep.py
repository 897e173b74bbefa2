"""Expands an MCM config over student step counts x methods (x guidance weights) into train runs
and their evals.

    python launch/sweep.py --config=configs/imagenet64_mcm.py --args=size=small \
        --steps=1,2,4,8 --methods=cd,ct \
        --teacher_workdir=gs://BUCKET/mcm/imagenet64_diffusion_small \
        --workdir_root=gs://BUCKET/mcm/sweep1 [--json] [--launcher=python|slurm|tpu_vm]
    python launch/sweep.py --config=configs/t2i_512_mcm.py --steps=4,8,16 --guidances=0.5,3 ...

prints one train command per (steps, method, guidance), then one eval command (`--mode=eval`) per
trained workdir. Each run's values go into the config argument
(`configs/imagenet64_mcm.py:steps=8,method=cd,size=small`), so the config file derives what
depends on them (e.g. guidance for ImageNet128 CD). Which of them a file takes is its own
`ARGUMENTS`: `--methods` defaults to its methods where it takes `method` (text-to-image takes
none: its students are CD), `--guidances` is for files that take `guidance`. `--launcher` wraps
each command in launch/slurm.sh or `launch/tpu_vm.sh run` instead of a plain `python -m
mcm_jax.main`.
Every run's command line is parsed and its config built and checked as `python -m mcm_jax.main`
would at its start (`check_configs`) before anything is printed, so a bad argument, a misspelled
`--override=--config.<field>` or a bad value fails here with main's message. `expand` returns the
runs as dicts, for scripts and tests.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence

from absl import app, flags

from mcm_jax.config import config_lib
from mcm_jax.run import cli

METHODS = ("cd", "ct")
LAUNCHERS = ("python", "slurm", "tpu_vm")


def _run_name(config: str, config_args: str, method: str | None, guidance: float | None,
              steps: int) -> str:
    stem = os.path.splitext(os.path.basename(config))[0]
    values = [item.partition("=")[2] for item in config_args.split(",") if item]
    swept = [method or "", "" if guidance is None else f"w{guidance:g}", f"s{steps}"]
    return "_".join([stem, *values, *filter(None, swept)])


def _command(launcher: str, name: str, flags: list[str], launcher_args: list[str]) -> list[str]:
    if launcher == "python":
        return ["python", "-m", "mcm_jax.main", *flags]
    head, overrides = flags[:3], flags[3:]  # --config, --workdir, --mode go to the launcher itself
    if launcher == "slurm":
        return ["launch/slurm.sh", f"--job-name={name}", *launcher_args, *head, "--", *overrides]
    return ["launch/tpu_vm.sh", *launcher_args, *head, "run", "--", *overrides]


def expand(
    config: str,
    steps: list[int],
    methods: list[str] | None,
    teacher_workdir: str,
    workdir_root: str,
    config_args: str = "",
    overrides: tuple[str, ...] = (),
    eval_overrides: tuple[str, ...] = (),
    launcher: str = "python",
    launcher_args: tuple[str, ...] = (),
    guidances: list[float] | None = None,
) -> list[dict]:
    """The train runs for every (steps, method, guidance), then the eval run of each. `methods`
    None: the file's methods if it takes `method` (its ARGUMENTS), else none; `guidances` None:
    the file's default weight.

    Each run: {"name", "mode", "workdir", "steps", "method", "guidance", "config", "flags",
    "command"} (method and guidance None where not swept); `flags` are mcm_jax.main's flags
    (--config, --workdir, --mode, then the overrides) and `command` the whole shell command.
    Raises ValueError naming the bad argument.
    """
    takes = config_lib.config_module(config.partition(":")[0]).__dict__.get("ARGUMENTS", {})
    if methods is None:
        methods = list(takes.get("method", ()))
    for name, values in (("methods", methods), ("guidances", guidances or [])):
        key = name[:-1]
        if values and key not in takes:
            raise ValueError(
                f"{name}: {config} takes no {key} argument (it takes "
                f"{', '.join(['runlocal', *takes])})"
            )
    if not steps or any(not isinstance(s, int) or s < 1 for s in steps):
        raise ValueError(f"steps: need integers >= 1, got {steps!r}")
    if "method" in takes and not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"methods: need a subset of {METHODS}, got {methods!r}")
    if guidances is not None and (not guidances or any(w < 0 for w in guidances)):
        raise ValueError(f"guidances: need weights >= 0, got {guidances!r}")
    if any(len(set(v)) != len(v) for v in (steps, methods, guidances or [])):
        raise ValueError(
            f"steps, methods and guidances must not repeat, got {steps!r}, {methods!r} and "
            f"{guidances!r}"
        )
    if not teacher_workdir:
        raise ValueError("teacher_workdir: MCM runs need the diffusion teacher's workdir")
    if not workdir_root:
        raise ValueError("workdir_root: needed to place the runs' workdirs")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher: {launcher!r} is not one of {LAUNCHERS}")
    swept = ["steps", *(["method"] if methods else []), *(["guidance"] if guidances else [])]
    for key in swept:
        if any(item.partition("=")[0] == key for item in config_args.split(",")):
            raise ValueError(f"config_args: {key!r} is set by the sweep, got {config_args!r}")

    runs = []
    grid = [(m, w, s) for m in methods or [None] for w in guidances or [None] for s in steps]
    for mode in ("train", "eval"):
        for method, guidance, s in grid:
            name = _run_name(config, config_args, method, guidance, s)
            workdir = f"{workdir_root.rstrip('/')}/{name}"
            values = [f"steps={s}", method and f"method={method}",
                      None if guidance is None else f"guidance={guidance:g}", config_args]
            arg = ",".join(filter(None, values))
            flags = [
                f"--config={config}:{arg}",
                f"--workdir={workdir}",
                f"--mode={mode}",
                f"--config.teacher.workdir={teacher_workdir}",
                *overrides,
                *(eval_overrides if mode == "eval" else ()),
            ]
            command = _command(launcher, f"{name}_{mode}", flags, list(launcher_args))
            runs.append({
                "name": name,
                "mode": mode,
                "workdir": workdir,
                "steps": s,
                "method": method,
                "guidance": guidance,
                "config": f"{config}:{arg}",
                "flags": flags,
                "command": shlex.join(command),
            })
    return runs


NOT_A_STUDENT = (
    "config: {config!r} builds objective {objective!r}; a sweep needs an MCM (student) config "
    "such as configs/digits_mcm.py or configs/imagenet64_mcm.py"
)


def _devices(config) -> int:
    """The fewest devices the config's mesh fits (data x fsdp; data=-1 fills: 1 x fsdp), for the
    checks that depend on the device count where the runs will go."""
    fsdp, data = config.mesh.fsdp, config.mesh.data
    fsdp = fsdp if isinstance(fsdp, int) and fsdp >= 1 else 1
    return fsdp * (data if isinstance(data, int) and data >= 1 else 1)


def check_configs(runs: list[dict]) -> None:
    """Parses each run's flags as `python -m mcm_jax.main` does (`mcm_jax.run.cli.parse_main_flags`) and checks
    the config it builds as the run will at its start (`run_setup.validate`, and for an eval run
    `evaluate.validate`), on the fewest devices its mesh fits; so a bad config argument, an
    override of no field or a bad value fails here, with main's message naming the field. What
    only the launched machine has (data, the teacher's checkpoint) is not checked. A config file
    that is not an MCM one is a ValueError saying so."""
    from mcm_jax.eval import evaluate
    from mcm_jax.run import cli, run_setup

    for config in sorted({run["config"].partition(":")[0] for run in runs}):
        objective = config_lib.load_config_file(config).objective  # its default argument
        if objective != "mcm":
            raise ValueError(NOT_A_STUDENT.format(config=config, objective=objective))
    for run in runs:
        argv = ["mcm_jax.main", *run["flags"]]
        flag_values = flags.FlagValues()
        cli.define_main_flags(flag_values, sys_argv=argv)
        cli.parse_main_flags(argv, flag_values)
        config = flag_values.config
        run_setup.validate(config, num_devices=_devices(config))
        if run["mode"] == "eval":
            evaluate.validate(config, _devices(config))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


FLAGS = flags.FlagValues()  # this command's own (see mcm_jax.run.cli)
flags.DEFINE_string("config", None, "an MCM config file, e.g. configs/imagenet64_mcm.py",
                    flag_values=FLAGS, required=True)
flags.DEFINE_string("args", "", "further config arguments, e.g. size=large", flag_values=FLAGS)
flags.DEFINE_list("steps", None, "student step counts, e.g. 1,2,4,8", flag_values=FLAGS,
                  required=True)
flags.register_validator("steps", lambda steps: all(s.isdigit() for s in steps or ()),
                         "--steps: need comma-separated integers", flag_values=FLAGS)
flags.DEFINE_list("methods", None, "cd, ct or cd,ct (default: the methods the config takes)",
                  flag_values=FLAGS)
flags.DEFINE_list("guidances", None, "guidance weights, e.g. 0.5,3 (configs that take guidance)",
                  flag_values=FLAGS)
flags.register_validator("guidances", lambda ws: all(_is_float(w) for w in ws or ()),
                         "--guidances: need comma-separated numbers", flag_values=FLAGS)
flags.DEFINE_string("teacher_workdir", None, "the diffusion teacher's workdir", flag_values=FLAGS,
                    required=True)
flags.DEFINE_string("workdir_root", None, "each run's workdir is ROOT/NAME", flag_values=FLAGS,
                    required=True)
flags.DEFINE_multi_string(
    "override", [], "a main.py flag for every run, e.g. --override=--config.data.data_dir=gs://...",
    flag_values=FLAGS,
)
flags.DEFINE_multi_string("eval_override", [], "a main.py flag for the eval runs only",
                          flag_values=FLAGS)
flags.DEFINE_enum("launcher", "python", LAUNCHERS, "how each command is launched",
                  flag_values=FLAGS)
flags.DEFINE_string("launcher_args", "", "flags for the launcher, e.g. '--nodes=4 --partition=gpu'",
                    flag_values=FLAGS)
flags.DEFINE_bool("json", False, "print the runs as a JSON list", flag_values=FLAGS)


def main(argv: Sequence[str]) -> None:
    """Prints the sweep's commands; `argv` is the command line, program name first. A bad argument
    ends in `error: ...` on stderr and exit status 2."""
    if len(FLAGS(argv)) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    try:
        runs = expand(
            FLAGS.config, [int(s) for s in FLAGS.steps], FLAGS.methods, FLAGS.teacher_workdir,
            FLAGS.workdir_root, config_args=FLAGS.args, overrides=tuple(FLAGS.override),
            eval_overrides=tuple(FLAGS.eval_override), launcher=FLAGS.launcher,
            launcher_args=tuple(shlex.split(FLAGS.launcher_args)),
            guidances=None if FLAGS.guidances is None else [float(w) for w in FLAGS.guidances],
        )
        check_configs(runs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if FLAGS.json:
        print(json.dumps(runs, indent=2))
        return
    for mode in ("train", "eval"):
        print(f"# {mode}")
        for run in runs:
            if run["mode"] == mode:
                print(run["command"])


if __name__ == "__main__":
    cli.run(main, FLAGS)
