"""Packaging: the TensorFlow wheel chosen per platform, the accelerator extras, and the install
stamp of launch/venv.sh (a rerun installs nothing, so it needs no network)."""

import os
import runpy
import subprocess
from unittest import mock

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What pip sees (PEP 508 environment) on each platform users install on.
PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "linux-aarch64 (GH200, GB200)": {"sys_platform": "linux", "platform_machine": "aarch64"},
    "macos-arm64 (Apple silicon)": {"sys_platform": "darwin", "platform_machine": "arm64"},
    "windows-amd64": {"sys_platform": "win32", "platform_machine": "AMD64"},
}
TENSORFLOW = {
    "linux-x86_64": "tensorflow-cpu",
    "linux-aarch64 (GH200, GB200)": "tensorflow",
    "macos-arm64 (Apple silicon)": "tensorflow",
    "windows-amd64": "tensorflow-cpu",
}


def _setup_kwargs() -> dict:
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(os.path.join(ROOT, "setup.py"))
    return setup.call_args.kwargs


def _installed(requirements: list[str], platform: dict, extra: str = "") -> dict[str, Requirement]:
    environment = {**platform, "extra": extra}
    parsed = [Requirement(r) for r in requirements]
    return {r.name: r for r in parsed if r.marker is None or r.marker.evaluate(environment)}


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_one_tensorflow_wheel_per_platform(platform):
    names = set(_installed(_setup_kwargs()["install_requires"], PLATFORMS[platform]))
    tensorflow = {n for n in names if n.startswith("tensorflow") and n != "tensorflow-datasets"}
    assert tensorflow == {TENSORFLOW[platform]}
    assert {"jax", "flax", "tensorflow-datasets"} <= names


@pytest.mark.parametrize("extra", ["tpu", "cuda12", "cuda13"])
def test_accelerator_extras_pull_jax_with_the_same_bounds(extra):
    kwargs = _setup_kwargs()
    (jax,) = [Requirement(r) for r in kwargs["install_requires"] if Requirement(r).name == "jax"]
    (accelerated,) = [Requirement(r) for r in kwargs["extras_require"][extra]]
    assert accelerated.name == "jax" and accelerated.extras == {extra}
    assert accelerated.specifier == jax.specifier


def test_markers_are_valid_pep508():
    for requirement in _setup_kwargs()["install_requires"]:
        marker = Requirement(requirement).marker
        if marker is not None:
            Marker(str(marker))  # round-trips


FAKE_PYTHON = """#!/bin/bash
# Creates a venv whose python logs what it is asked to run.
if [[ "$1 $2" == "-m venv" ]]; then
  mkdir -p "$3/bin"
  printf '#!/bin/bash\\necho "$*" >>"%s"\\n' "$LOG" >"$3/bin/python"
  chmod +x "$3/bin/python"
fi
"""


def _source_venv(repo, env) -> list[str]:
    log = repo / "calls.log"
    log.write_text("")
    subprocess.run(["bash", "-c", "set -eu; source launch/venv.sh"], cwd=repo, env=env, check=True)
    return log.read_text().splitlines()


def _repo_with_fake_python(tmp_path, fake_python: str):
    """A repository with launch/venv.sh and setup.py, and the environment to source it with a
    fake python; returns (repo, env)."""
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    (repo / "launch" / "venv.sh").write_text(open(os.path.join(ROOT, "launch", "venv.sh")).read())
    (repo / "setup.py").write_text("# version 1\n")
    (repo / "launch" / "no-deps-requirements.txt").write_text("keras-hub==1\n")
    python = tmp_path / "python3"
    python.write_text(fake_python)
    python.chmod(0o755)
    return repo, {"PATH": "/usr/bin:/bin", "PYTHON": str(python), "LOG": str(repo / "calls.log")}


def test_venv_installs_once_then_only_when_setup_py_or_the_no_deps_pins_change(tmp_path):
    repo, env = _repo_with_fake_python(tmp_path, FAKE_PYTHON)

    install = [
        "-m pip install -q --upgrade pip",
        "-m pip install -q -e .[test]",
        "-m pip install -q --no-deps -r launch/no-deps-requirements.txt",
    ]
    assert _source_venv(repo, env) == install  # no .venv: create and install
    assert _source_venv(repo, env) == []  # rerun: nothing, so no network
    (repo / "setup.py").write_text("# version 2\n")
    assert _source_venv(repo, env) == install  # setup.py changed: reinstall into the same .venv
    assert _source_venv(repo, env) == []
    (repo / "launch" / "no-deps-requirements.txt").write_text("keras-hub==2\n")
    assert _source_venv(repo, env) == install  # the no-deps pins changed: reinstall
    assert _source_venv(repo, env) == []


def test_a_failed_install_shows_the_end_of_pip_s_log_and_fails(tmp_path):
    failing = FAKE_PYTHON.replace('>>"%s"\\n', '>>"%s"; echo "no matching distribution"; exit 1\\n')
    repo, env = _repo_with_fake_python(tmp_path, failing)
    result = subprocess.run(["bash", "-c", "set -eu; source launch/venv.sh; echo after"],
                            cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "after" not in result.stdout
    assert "no matching distribution" in result.stderr
    assert "error: installing into .venv failed" in result.stderr
    assert not (repo / ".venv" / "installed-stamp").exists()  # the next run tries again
