"""The miniature's plumbing: its runs, its report from their numbers, a resumable tiny end-to-end."""

import dataclasses
import io

import pytest

from mcm_jax.experiments import miniature, provenance

TINY = miniature.Scale(
    model="tiny", teacher_steps=4, student_steps=2, samples=24, seeds=2,
    student_sampling_steps=(1, 2), teacher_sweep=(1, 2, 64), ablation_sampling_steps=2,
    teacher_steps_annealed=(4, 16), teacher_steps_constant=(4, 16), pd_sampling_steps=(1, 2),
    pd_start_steps=2,
)
# End to end: every kind of run once or twice (each compiles its programs: about a minute).
TINIER = dataclasses.replace(
    TINY, student_sampling_steps=(2,), teacher_sweep=(2, 64), teacher_steps_constant=(16,),
    pd_sampling_steps=(2,),
)


def test_runs_cover_every_table_once(tmp_path):
    runs = miniature.runs(str(tmp_path), TINY)
    names = [run.name for run in runs]
    assert names[0] == "teacher" and len(set(names)) == len(names)
    assert {"ct_s1_seed0", "cd_s2_seed1", "cd_s2_constant4", "cd_s2_constant16",
            "cd_s2_ddim_teacher", "cd_s2_snr_plus_one", "pd_s1_seed0", "pd_s2_seed1"} <= set(names)
    assert len(names) == 1 + 2 * (2 * 2 + 2) + 2 + 2
    config = {run.name: run.config for run in runs}
    assert config["cd_s2_seed1"].seed == 1 and config["cd_s2_seed1"].eval.seed == 0  # same noise
    assert (config["cd_s2_constant16"].mcm.teacher_steps_start,
            config["cd_s2_constant16"].mcm.teacher_steps_end) == (16, 16)
    assert (config["cd_s2_seed0"].mcm.teacher_steps_start,
            config["cd_s2_seed0"].mcm.teacher_steps_end) == (4, 16)
    assert config["cd_s2_ddim_teacher"].mcm.xvar_frac == 0.0
    assert config["cd_s2_snr_plus_one"].mcm.weighting == "snr_plus_one"
    assert config["teacher"].eval.sweep_steps == (1, 2, 64)
    assert config["teacher"].eval.sweep_methods == ("ddim", "addim")
    assert {c.eval.name for c in config.values()} == {miniature.EVAL_TAG}
    # PD: the students' budget of 2 iterations, in rounds from 2 student steps down to S.
    pd1, pd2 = config["pd_s1_seed1"], config["pd_s2_seed0"]
    assert (pd1.mcm.method, pd1.seed, pd1.mcm.pd_start_steps) == ("pd", 1, 2)
    assert (pd1.mcm.pd_round_steps, pd1.training.num_steps) == (1, 2)  # rounds 2 -> 1
    assert (pd2.mcm.pd_round_steps, pd2.training.num_steps) == (2, 2)  # one round at S = 2
    calibrated = miniature.calibrated_teacher_config(str(tmp_path), runs[0])
    assert calibrated.eval.name == miniature.CALIBRATED_TAG
    assert calibrated.eval.sweep_methods == ("addim",)
    assert calibrated.eval.x_var_table == str(tmp_path / "teacher" / "addim_x_var_step4.npz")


def _summary(cd_fd, ct_fd, ddim, addim, annealed, constant, ddim_teacher, snr, pd_fd=None,
             calibrated=None):
    table1 = {}
    for method, fds in (("cd", cd_fd), ("ct", ct_fd), ("pd", pd_fd or [f + 5 for f in cd_fd])):
        for s, fd in zip(TINY.student_sampling_steps, fds):
            table1[(method, s)] = {"fd_digits": (fd, 0.5), "class_accuracy": (0.9, 0.01)}
    teacher = {("ddim", n): (fd, 0.9) for n, fd in zip(TINY.teacher_sweep, ddim)}
    teacher |= {("addim", n): (fd, 0.9) for n, fd in zip(TINY.teacher_sweep, addim)}
    teacher |= {("addim_calibrated", n): (fd, 0.8)
                for n, fd in zip(TINY.teacher_sweep, calibrated or addim)}
    return {
        "table1": table1, "teacher": teacher, "annealed": annealed,
        "constant": dict(zip(TINY.teacher_steps_constant, constant)),
        "ddim_teacher": ddim_teacher, "addim_teacher": annealed, "v_loss": annealed,
        "snr_plus_one": snr, "seed_sd": 0.5,
    }


def test_claims_follow_the_numbers_and_their_noise():
    # Two seeds, sd 0.5 for every Table 1 cell: a CD-CT difference needs more than
    # 2·sqrt((0.5² + 0.5²)/2) = 1.0; a single-seed ablation more than 2·√2·0.5 = 1.41.
    agreeing = _summary([9.0, 6.0], [12.0, 8.0], [50.0, 20.0, 5.0], [30.0, 15.0, 4.5],
                        annealed=6.0, constant=[8.0, 7.5], ddim_teacher=8.0, snr=9.0)
    paragraphs = miniature.claims(agreeing, TINY)
    assert len(paragraphs) == 8
    assert all(p.endswith(miniature.AGREES) for p in paragraphs[:7]), paragraphs
    assert "9.00 → 6.00" in paragraphs[0] and "12.00 → 8.00" in paragraphs[0]
    assert "S = 1: 9.00 vs 12.00 (noise ±1.00, CD ahead)" in paragraphs[1]
    assert "1 step 30.00 vs 50.00 (30.00)" in paragraphs[3]
    assert "S = 2: 6.00 vs 11.00 (noise ±1.00, CD ahead)" in paragraphs[4]
    assert "v-space is better beyond the noise" in paragraphs[7]
    disagreeing = _summary([7.0, 9.5], [5.0, 8.0], [20.0, 10.0, 5.0], [30.0, 15.0, 4.5],
                           annealed=8.0, constant=[7.0, 6.5], ddim_teacher=6.0, snr=8.2,
                           pd_fd=[5.0, 7.0])
    paragraphs = miniature.claims(disagreeing, TINY)
    assert all(miniature.DISAGREES in p for p in paragraphs[:7]), paragraphs
    assert "S = 1: 7.00 vs 5.00 (noise ±1.00, PD ahead)" in paragraphs[4]
    assert "within the noise" in paragraphs[7]
    within_noise = _summary([9.0, 6.0], [9.5, 6.5], [50.0, 20.0, 5.0], [30.0, 15.0, 4.5],
                            annealed=6.0, constant=[7.0, 6.5], ddim_teacher=7.0, snr=6.0,
                            pd_fd=[9.5, 5.5], calibrated=[40.0, 15.0, 5.0])
    paragraphs = miniature.claims(within_noise, TINY)
    assert [p.endswith(miniature.INCONCLUSIVE) for p in paragraphs[1:7]] == [
        True, False, False, True, True, True
    ]
    assert "better than DDIM at 2 of 2. **Agrees.**" in paragraphs[3]


def test_report_has_every_table_and_the_provenance():
    summary = _summary([9.0, 6.0], [12.0, 8.0], [50.0, 20.0, 5.0], [30.0, 15.0, 4.5],
                       annealed=6.0, constant=[8.0, 7.5], ddim_teacher=8.0, snr=9.0)
    meta = {"command": "python -m mcm_jax.experiments.miniature --x", "commit": "abc1234",
            "machine": "2 CPU cores (test)", "duration": "1h02m", "provenance": "Code: hashed."}
    text = miniature.report(summary, TINY, meta)
    assert "python -m mcm_jax.experiments.miniature --x" in text and "`abc1234`" in text
    assert "2 CPU cores (test); wall time 1h02m." in text and "\nCode: hashed.\n" in text
    assert ("| 2 | 8.00 ± 0.50 (0.90 ± 0.01) | 6.00 ± 0.50 (0.90 ± 0.01) "
            "| 11.00 ± 0.50 (0.90 ± 0.01) |") in text
    assert "| 64 | 5.00 (0.900) | 4.50 (0.900) | 4.50 (0.800) |" in text
    assert "(2 // rounds steps per round: 1 at S = 1, 2 at S = 2)" in text
    assert "| teacher steps constant 16 | 7.50 |" in text
    assert "miniature_samples.png" in text and "miniature_fd_steps.png" in text


@pytest.mark.slow
def test_tiny_miniature_end_to_end_then_reuses_finished_runs(tmp_path):
    out = tmp_path / "docs"
    lines = io.StringIO()
    path = miniature.run(str(tmp_path / "work"), str(out), TINIER, "cmd", stream=lines)
    text = path.read_text()
    verdicts = (miniature.AGREES, miniature.DISAGREES, miniature.INCONCLUSIVE)
    assert "## Tables 1 and 3" in text and sum(text.count(v) for v in verdicts) >= 5
    assert (out / "miniature_samples.png").exists() and (out / "miniature_fd_steps.png").exists()
    stages = lines.getvalue().splitlines()
    assert len(stages) == 2 * 10 + 2 and stages[-1].startswith("[22/22] report")
    assert "all 10 runs were made by this invocation" in text
    # A rerun trains and samples nothing (every run is finished) and reports the same numbers.
    again = io.StringIO()
    miniature.run(str(tmp_path / "work"), str(out), TINIER, "cmd", stream=again)
    assert path.read_text().split("Every number")[1].split("Code:")[0] == (
        text.split("Every number")[1].split("Code:")[0]
    )
    assert "10 of the 10 runs were reused" in path.read_text()


def test_runs_of_other_code_or_config_are_moved_aside_and_redone(tmp_path):
    """A run is reused only if the hashes of its code and config are this invocation's; others
    move to stale/ (nothing is deleted)."""
    record = {"commit": "new", "code_hash": "a" * 64}
    configs = {"teacher": "t", "cd_s1_seed0": "c"}
    records, reused = miniature.claim_runs(str(tmp_path), configs, record)
    assert reused == [] and records["teacher"] == dict(record, config_hash="t")
    (tmp_path / "teacher" / "checkpoint").write_text("kept")
    records, reused = miniature.claim_runs(str(tmp_path), configs, record)
    assert reused == ["teacher", "cd_s1_seed0"]
    assert (tmp_path / "teacher" / "checkpoint").read_text() == "kept"
    records, reused = miniature.claim_runs(str(tmp_path), {"cd_s1_seed0": "other"}, record)
    assert reused == [] and (tmp_path / "stale" / f"cd_s1_seed0.{'a' * 12}").is_dir()
    changed = {"commit": "newer", "code_hash": "b" * 64}
    (tmp_path / "ct_s1_seed0").mkdir()  # a run of code that recorded no hash
    records, reused = miniature.claim_runs(
        str(tmp_path), {"teacher": "t", "ct_s1_seed0": "c"}, changed
    )
    assert reused == [] and records["teacher"] == dict(changed, config_hash="t")
    assert not (tmp_path / "teacher" / "checkpoint").exists()
    assert (tmp_path / "stale" / f"teacher.{'a' * 12}" / "checkpoint").read_text() == "kept"
    assert (tmp_path / "stale" / "ct_s1_seed0.unrecorded").is_dir()
    sentence = miniature.provenance_sentence(
        changed, {"teacher": record, "x": changed}, ["teacher"]
    )
    assert f"hash to `{'b' * 12}`" in sentence
    assert "1 of the 2 runs were reused from an earlier invocation at commit `new`" in sentence


def test_the_code_hash_follows_the_imports_of_what_runs():
    files = {
        str(p.relative_to(provenance.ROOT))
        for p in provenance.source_files(miniature.CODE_ROOTS)
    }
    assert {"mcm_jax/train/train.py", "mcm_jax/method/losses.py", "mcm_jax/eval/evaluate.py",
            "mcm_jax/eval/calibrate.py", "mcm_jax/config/presets.py", "mcm_jax/data/input_pipeline.py",
            "mcm_jax/eval/digits_classifier.py"} <= files
    assert not {"mcm_jax/experiments/miniature.py", "mcm_jax/experiments/results_table.py"} & files
