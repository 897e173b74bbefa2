"""The text-to-image miniature on captioned digits: the whole path on the tiny network, the
prompted-digit rate and the report's checks."""

import numpy as np
import pytest

from mcm_jax import text_digits


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
