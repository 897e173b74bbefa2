"""The text-to-image miniature on captioned digits: the whole path on the tiny network, the
prompted-digit rate and the report's checks."""

import numpy as np
import pytest

from mcm_jax.experiments import text_digits


class _ReadsTheFirstPixel:
    """A stand-in classifier whose logits put the digit in the first pixel's value first."""

    def logits_and_features(self, grey):
        digits = grey[:, 0, 0, 0].astype(int)
        return np.eye(10)[digits], None


def test_prompted_digit_rate_compares_the_classified_digit_with_the_caption(tmp_path):
    samples = np.zeros((4, 16, 16, 3), np.uint8)
    samples[:, 0, 0, :] = np.array([7, 3, 0, 9])[:, None]
    captions = np.array(["a handwritten seven", "the digit 3", "number 1", "my neat nine"])
    np.savez(tmp_path / "samples.npz", arr_0=samples, captions=captions)
    rate = text_digits.prompted_digit_rate(tmp_path / "samples.npz", _ReadsTheFirstPixel())
    assert rate == 0.75


@pytest.mark.slow
def test_quick_miniature_runs_reports_and_reuses_its_runs(tmp_path):
    out = tmp_path / "docs"
    table = text_digits.run(str(tmp_path / "work"), text_digits.QUICK, str(out))
    assert table.count("\n") == 5  # header, rule, 2 models x 2 prompt sets
    report = (out / "text_digits.md").read_text()
    assert "held-out prompts: teacher" in report and "(asked: within 10%)" in report
    assert (out / "text_digits.png").exists()
    again = text_digits.run(str(tmp_path / "work"), text_digits.QUICK, str(out))
    assert again == table  # finished runs and evaluations are reused, to the digit


def test_a_teacher_stopped_by_a_signal_stops_the_miniature_before_anything_uses_it(
    tmp_path, monkeypatch
):
    """SIGTERM makes the teacher's training save and return early: no evaluation, no student."""
    import io
    from types import SimpleNamespace

    from mcm_jax.data import captioned_digits
    from mcm_jax.experiments import digits_runs

    info = {"data_dir": str(tmp_path / "data"), "text_length": 12, "text_width": 64,
            "resolution": 16, "splits": {"train": 64, "test": 8, "heldout": 8}}
    trained, evaluated = [], []
    monkeypatch.setattr(captioned_digits, "build", lambda out_dir: info)
    monkeypatch.setattr(text_digits.digits_classifier, "load_or_train", lambda *args: None)
    monkeypatch.setattr(digits_runs.train, "train", lambda config, workdir, progress: (
        trained.append(workdir), SimpleNamespace(step=5))[1])
    monkeypatch.setattr(text_digits.evaluate, "evaluate", lambda *a, **k: evaluated.append(a))
    with pytest.raises(digits_runs.Stopped, match="teacher saved step 5 of 8 and stopped"):
        text_digits.run(str(tmp_path / "work"), text_digits.QUICK, str(tmp_path / "docs"),
                        stream=io.StringIO())
    assert trained == [str(tmp_path / "work" / "teacher")] and evaluated == []
    assert not (tmp_path / "docs").exists()
