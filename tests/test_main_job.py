"""The main job's path end to end on digits, with a tiny network and tiny step counts."""

import pytest

from mcm_jax import main_job


@pytest.mark.slow
def test_main_job_trains_distils_evaluates_and_tabulates(tmp_path):
    table = main_job.run(
        str(tmp_path), model="tiny", teacher_steps=10, student_steps=2, samples=32,
        students=(("cd", 2), ("ct", 2)), teacher_sweep=(2,),
    )
    lines = table.splitlines()
    assert lines[0] == "| run | sampler | steps | fd_digits | class_accuracy |"
    runs = [line.split("|")[1:4] for line in lines[2:]]
    assert [[cell.strip() for cell in run] for run in runs] == [
        ["cd_s2", "ddim", "2"], ["ct_s2", "ddim", "2"], ["teacher", "ddim", "2"], ["teacher", "addim", "2"],
    ]
    assert (tmp_path / "results.md").read_text().strip() == table
    for line in lines[2:]:
        fd_digits, accuracy = (float(cell) for cell in line.split("|")[4:6])
        assert fd_digits > 0 and 0 <= accuracy <= 1
