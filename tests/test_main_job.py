"""The main job's path end to end on digits, with a tiny network and tiny step counts."""

import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from mcm_jax.experiments import main_job, results_picture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_main_job_trains_distils_evaluates_tabulates_and_draws(tmp_path):
    """`python -m mcm_jax.experiments.main_job --quick`: every stage, the table and the picture; the
    terminal gets one line per stage, library INFO logs go to main_job.log."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "mcm_jax.experiments.main_job", f"--workdir={tmp_path}", "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "results.md").read_text().strip().splitlines()
    assert table[0] == "| run | sampler | steps | fd_digits | class_accuracy |"
    runs = [[cell.strip() for cell in line.split("|")[1:4]] for line in table[2:]]
    assert runs == [
        ["cd_s2", "ddim", "2"], ["ct_s2", "ddim", "2"], ["teacher", "ddim", "2"],
        ["teacher", "ddim", "64"], ["teacher", "addim", "2"], ["teacher", "addim", "64"],
    ]
    for line in table[2:]:
        fd_digits, accuracy = (float(cell) for cell in line.split("|")[4:6])
        assert fd_digits > 0 and 0 <= accuracy <= 1
    # The picture: the teacher's row and the CD student's, 20 images each, enlarged.
    picture = Image.open(tmp_path / "results.png")
    assert picture.width > 20 * 16 * 3 and picture.height > 2 * 16 * 3
    # The terminal: a header, one line per stage (teacher and two students, each trained then
    # evaluated, then the table), the total; nothing from the libraries' INFO or WARNING logs.
    out = result.stdout.splitlines()
    assert out[0].startswith(f"main job in {tmp_path}")
    assert [line.split(":")[0] for line in out if line.startswith("[")] == [
        "[1/7] teacher", "[2/7] teacher", "[3/7] cd_s2", "[4/7] cd_s2", "[5/7] ct_s2",
        "[6/7] ct_s2", "[7/7] table and picture",
    ]
    assert out[-1].startswith("total ") and "results.png" in out[-1]
    log = (tmp_path / "main_job.log").read_text()
    assert "checkpoint" in log.lower() and len(log.splitlines()) > 50
    assert " INFO" not in result.stderr and "checkpoint_manager.py" not in result.stderr
    assert len(result.stdout.splitlines()) + len(result.stderr.splitlines()) < 80


def test_quick_is_a_path_check_of_every_stage_kind():
    quick = main_job.QUICK
    assert quick.model == "tiny" and {m for m, _ in quick.students} == {"cd", "ct"}
    assert results_picture.TEACHER_SETTING[1] in quick.teacher_sweep


def test_a_run_stopped_by_a_signal_stops_the_job_before_anything_uses_it(tmp_path, monkeypatch):
    """SIGTERM makes train.train save and return early; nothing may evaluate or distil from it."""
    from types import SimpleNamespace

    from mcm_jax.experiments import digits_runs

    calls = []
    monkeypatch.setattr(digits_runs.train, "train",
                        lambda config, workdir, progress: SimpleNamespace(step=7))
    monkeypatch.setattr(digits_runs.evaluate, "evaluate",
                        lambda *args, **kwargs: calls.append("evaluate"))
    with pytest.raises(digits_runs.Stopped, match="teacher saved step 7 of 20 and stopped"):
        main_job.run(str(tmp_path), main_job.QUICK, stream=io.StringIO())
    assert calls == []
