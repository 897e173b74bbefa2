"""Every config file in configs/ runs as a laptop smoke test (`:...,runlocal`) through
mcm_jax.main's command line: trains to its first checkpoint, resumes to the last step, evaluates;
students against a runlocal teacher of their family. Each file's argument values come from the
file itself (its ARGUMENTS), so a new file, or a new value, is run without editing this test.

The runs call mcm_jax.main's own flag parsing and `run` in this process (what `python -m
mcm_jax.main` does after importing), which saves a TensorFlow start per run; the command line
itself, in a subprocess, is run by test_api.py (docs/api.md's commands) and by the bad-combination
test here.
"""

import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import filelock
import numpy as np
import pytest
from absl import flags

from mcm_jax import main, runlocal
from mcm_jax.config import config_lib, presets
from mcm_jax.models.configs import RESNET, TRANSFORMER
from mcm_jax.run import checkpointing, cli, run_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
NAMES = sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith(".py"))


def arguments(name: str) -> dict[str, tuple]:
    """The ARGUMENTS the config file declares: key -> values, the default first."""
    module = config_lib.config_module(f"{CONFIGS}/{name}.py")
    assert isinstance(getattr(module, "ARGUMENTS", None), dict), f"configs/{name}.py: no ARGUMENTS"
    return module.ARGUMENTS


def argument_runs(name: str) -> list[str]:
    """Argument strings that together give every declared value once: run k takes value k of
    each key (cycling), so there are as many runs as the longest list of values."""
    spec = arguments(name)
    count = max((len(values) for values in spec.values()), default=1)
    return [
        ",".join(f"{key}={values[k % len(values)]}" for key, values in spec.items())
        for k in range(count)
    ]


def teacher_of(name: str, arg: str) -> tuple[str, str]:
    """(teacher file, its argument) for a student file's run: the family's diffusion file, with
    the student's values of the keys it takes (its defaults for the others)."""
    teacher = re.sub(r"_(mcm|pd)$", "_diffusion", name)
    assert teacher != name and teacher in NAMES, f"configs/{name}.py: no configs/{teacher}.py"
    given = dict(item.split("=") for item in arg.split(",") if item)
    spec = arguments(teacher)
    return teacher, ",".join(f"{k}={given.get(k, str(v[0]))}" for k, v in spec.items())


def run_main(*args: str) -> None:
    """What `python -m mcm_jax.main ARGS` does once imported: parse into fresh flags, run."""
    argv = ["mcm_jax.main", *args]
    flag_values = flags.FlagValues()
    cli.define_main_flags(flag_values, sys_argv=argv)
    cli.parse_main_flags(argv, flag_values)
    main.run(flag_values.config, flag_values.workdir, flag_values.mode)


def run_locally(name: str, arg: str, workdir, data_dir, *extra: str, cycle: bool) -> None:
    """Runs configs/<name>.py:<arg>,runlocal in `workdir`: the steps to its first checkpoint and,
    if `cycle`, a resume to the config's last step and the eval job; checks what each wrote."""
    first, last = presets.RUNLOCAL_CHECKPOINT_EVERY, presets.RUNLOCAL_STEPS
    common = [f"--config={CONFIGS}/{name}.py:{arg},runlocal", f"--workdir={workdir}",
              f"--config.data.data_dir={data_dir}", *extra]
    # Runs that only add argument values skip the sample grids: the cycle draws them.
    grids = [] if cycle else ["--config.training.sample_every=0"]
    run_main(*common, f"--config.training.num_steps={first}", *grids)
    if cycle:
        run_main(*common)  # resumes from its first checkpoint to the runlocal config's last step
        run_main(*common, "--mode=eval")
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    assert ckpt.all_steps() == ([first, last] if cycle else [first])
    ckpt.close()
    config = run_setup.saved_config(str(workdir))
    assert config.runlocal and config.model.name in ("tiny", "digits")
    if not cycle:
        return
    assert (workdir / f"samples_{last:08d}.png").exists()
    (metrics,) = workdir.glob(f"eval/*/step_{last:08d}/*/metrics.json")
    assert (metrics.parent / "samples.png").exists()
    row = json.loads(metrics.read_text())
    if config.data.name == "digits":
        assert np.isfinite(row["fd_digits"])
    if config.data.name == "captions":
        assert 0.0 <= row["clip_score"] <= 100.0


def shared_root(tmp_path_factory) -> pathlib.Path:
    """A directory shared by the pytest-xdist workers of this session (each worker's own base
    temp dir is one level below it), so a run one worker made is reused by the others."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "runlocal"


class _RunlocalLines(logging.Handler):
    """Keeps the messages of the "runlocal:" lines a run logs."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("runlocal:"):
            self.lines.append(record.getMessage())


@pytest.fixture(scope="session")
def runs(tmp_path_factory, digits_data_dir):
    """`runs(name, arg, *extra, cycle=...)` runs a config file locally once per (name, arg) in
    the session, whichever worker asks first (the others wait on its lock), and returns its
    workdir, with the "runlocal:" lines its first run logged in `<workdir>.json`; students'
    teachers come from here, so each is trained once."""
    root = shared_root(tmp_path_factory)
    root.mkdir(exist_ok=True)

    def run(name: str, arg: str, *extra: str, cycle: bool = False):
        workdir = root / f"{name}_{arg.replace(',', '_').replace('=', '')}"
        lines = workdir.with_suffix(".json")
        with filelock.FileLock(f"{workdir}.lock"):
            done = [workdir.with_suffix(".cycled")] + ([] if cycle else [lines])
            if not any(path.exists() for path in done):
                handler = _RunlocalLines()
                logging.getLogger().addHandler(handler)
                try:
                    run_locally(name, arg, workdir, digits_data_dir, *extra, cycle=cycle)
                finally:
                    logging.getLogger().removeHandler(handler)
                if not lines.exists():
                    lines.write_text(json.dumps(handler.lines))
                if cycle:
                    workdir.with_suffix(".cycled").touch()
        return workdir

    return run


# (file, argument, whether the run cycles): each file's first argument trains, resumes and is
# evaluated; the others, which give the rest of the file's values, train without sample grids.
RUNS = [(name, arg, k == 0) for name in NAMES for k, arg in enumerate(argument_runs(name))]


@pytest.mark.slow
@pytest.mark.parametrize("name,arg,cycle", RUNS, ids=[f"{n}:{a}" for n, a, _ in RUNS])
def test_every_config_file_runs_locally_with_every_argument_value(name, arg, cycle, runs):
    objective = config_lib.load_config_file(f"{CONFIGS}/{name}.py:{arg}").objective
    extra = []
    if objective == "mcm":
        extra = [f"--config.teacher.workdir={runs(*teacher_of(name, arg))}"]
    workdir = runs(name, arg, *extra, cycle=cycle)
    assert run_setup.saved_config(str(workdir)).objective == objective
    synthetic = json.loads(workdir.with_suffix(".json").read_text())
    if name.startswith("digits"):
        assert synthetic == []  # digits is built offline: the real data
    else:
        assert synthetic and all("a run without runlocal never does" in m for m in synthetic)


def test_every_config_file_declares_its_argument_values():
    for name in NAMES:
        spec = arguments(name)
        for arg in argument_runs(name):
            config = config_lib.load_config_file(f"{CONFIGS}/{name}.py:{arg},runlocal")
            assert config.runlocal and config.training.batch_size == 8
            assert config_lib.load_config_file(f"{CONFIGS}/{name}.py:{arg}").runlocal is False
        for key, values in spec.items():
            assert values and all(type(v) is type(values[0]) for v in values), (name, key)


def test_runlocal_keeps_the_experiment_on_the_tiny_network():
    real, local = presets.t2i_mcm("steps=4"), presets.t2i_mcm("steps=4,runlocal")
    for field in ("schedule", "diffusion", "mcm"):
        assert local[field].to_dict() == real[field].to_dict(), field
    assert local.data.resolution == real.data.resolution == 512
    assert local.model.name == "tiny" and local.model.level_dropout == real.model.level_dropout
    assert real.data.autotune and not local.data.autotune  # a smoke test's end is not held
    assert not presets.digits_diffusion().data.autotune
    # The 64 px transformer level would attend over 4096 positions: a ResNet level on a laptop.
    assert real.model.level_kinds == (RESNET, RESNET, RESNET, TRANSFORMER)
    assert local.model.level_kinds == (RESNET,) * 4
    assert presets.imagenet_mcm(64, "runlocal").model.level_kinds == (RESNET, TRANSFORMER)
    assert presets.digits_mcm("runlocal").model.name == "tiny"
    assert presets.digits_mcm("model=digits,runlocal").model.name == "digits"
    guided = presets.imagenet_mcm(128, "size=small,method=cd,runlocal")
    assert guided.mcm.guidance_weight == presets.IMAGENET128_GUIDANCE_WEIGHT


@pytest.mark.slow
def test_two_eval_jobs_writing_the_clip_leave_one_whole_clip(tmp_path):
    """The first eval job of a runlocal text-to-image workdir writes the tiny CLIP aside and
    renames it into place; a second job that finds it there already keeps the first's."""
    def files():
        clip = tmp_path / runlocal.CLIP_DIR
        return {str(p.relative_to(clip)): p.read_bytes() for p in clip.rglob("*") if p.is_file()}

    runlocal.write_clip(str(tmp_path))
    first = files()
    runlocal.write_clip(str(tmp_path))  # as a job that started before the first one renamed
    assert [p.name for p in tmp_path.iterdir()] == [runlocal.CLIP_DIR]  # no staging left
    assert first and files() == first


@pytest.mark.slow
def test_an_eval_that_would_write_the_clip_on_gs_says_so_in_one_line(gcs_dir):
    """A runlocal text-to-image workdir copied to gs:// before its first eval: the CLIP is written
    only into a local directory, and the eval says so instead of failing inside tempfile."""
    (gcs_dir / runlocal.RUNLOCAL_DIR).mkdir(parents=True)
    (gcs_dir / runlocal.RUNLOCAL_DIR / runlocal.COMPLETE).write_text("")
    with pytest.raises(ValueError, match=r"runlocal: gs://.* has no tiny CLIP yet.* local copy"):
        runlocal.prepare(presets.t2i_diffusion("runlocal"), str(gcs_dir), "eval")


def test_a_real_run_never_uses_synthetic_data():
    config = presets.cifar10_diffusion()
    runlocal.prepare(config, "/nonexistent", "train")  # not runlocal: nothing is touched
    assert config.data.synthetic is False
    config.data.synthetic = True
    with pytest.raises(ValueError, match="config.data.synthetic: only a runlocal smoke test"):
        run_setup.validate(config, num_devices=8)
    with pytest.raises(ValueError, match="config argument runlocal='maybe'"):
        presets.cifar10_diffusion("runlocal=maybe")


@pytest.mark.slow
def test_a_runlocal_student_of_a_real_teacher_fails_at_start_with_one_line(tmp_path):
    (tmp_path / "teacher").mkdir()
    checkpointing.write_config(str(tmp_path / "teacher"), presets.digits_diffusion("model=tiny"))
    result = subprocess.run(
        [sys.executable, "-m", "mcm_jax.main", "--config=configs/digits_mcm.py:runlocal",
         f"--workdir={tmp_path / 'student'}", f"--config.teacher.workdir={tmp_path / 'teacher'}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "is not a runlocal smoke test and this student is" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "student").exists()


def test_synthetic_batches_have_the_data_sets_shapes_and_resume_exactly():
    from mcm_jax.data import synthetic

    data = presets.imagenet_diffusion(64, "runlocal").data
    data.synthetic = True
    make = lambda state: synthetic.SyntheticTrainIterator(
        data, global_batch_size=8, seed=3, state=state, process_index=0, process_count=1
    )
    stream = make(None)
    first = next(stream)
    assert first["image"].shape == (8, 64, 64, 3) and first["image"].dtype == np.float32
    assert -1 <= first["image"].min() and first["image"].max() <= 1 and first["image"].std() > 0.1
    labels = first["label"]
    assert labels.dtype == np.int32 and 0 <= labels.min() <= labels.max() < 1000
    state = stream.get_state()
    expected = next(stream)
    resumed = next(make(state))
    for key in ("image", "label"):
        np.testing.assert_array_equal(resumed[key], expected[key])
    assert not np.array_equal(expected["image"], first["image"])
