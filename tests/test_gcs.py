"""Files on gs://, as on a pod: a local GCS emulator (fixture `gcs_emulator`) stands in for GCS.

Every file here is written and read through the project's own functions at a gs:// path, and
the emulator's own listing shows that it landed in the bucket, not on the local disk.
"""

import hashlib

import jax
import numpy as np
import pytest
from etils import epath

from mcm_jax import files
from mcm_jax.config import presets
from mcm_jax.eval import calibrate
from mcm_jax.eval.fid import inception, statistics, weights
from mcm_jax.method import samplers
from mcm_jax.run import checkpointing, run_setup
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import train


def _object_names(gcs_emulator, directory: epath.Path) -> list[str]:
    """The object names the emulator holds under `directory`, relative to it."""
    prefix = str(directory).removeprefix(f"gs://{gcs_emulator.bucket}/") + "/"
    return [name.removeprefix(prefix) for name in gcs_emulator.object_names(prefix)]


def test_atomic_writes_leave_only_the_file(gcs_emulator, gcs_dir):
    path = gcs_dir / "sub" / "table.npz"
    files.save_npz(path, a=np.arange(3))
    files.save_npz(path, a=np.arange(4))  # replaces the first
    assert _object_names(gcs_emulator, gcs_dir) == ["sub/table.npz"]
    assert files.is_file(path) and not files.is_file(gcs_dir / "sub")
    assert not files.is_file(gcs_dir / "missing.npz")
    with files.open_npz(path) as archive:
        np.testing.assert_array_equal(archive["a"], np.arange(4))


def test_inception_weights_and_sha256_on_gcs(gcs_emulator, gcs_dir):
    params = jax.tree.map(
        lambda shape: np.full(shape.shape, 0.5, np.float32), inception.param_shapes()
    )
    path = gcs_dir / "fid_inception.npz"
    sha256 = weights.save_params(params, path)
    assert _object_names(gcs_emulator, gcs_dir) == ["fid_inception.npz", "fid_inception.npz.sha256"]
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == weights.file_sha256(path)
    assert weights.sidecar_path(str(path)).read_text() == f"{sha256}  fid_inception.npz\n"

    loaded = weights.load_inception_params(str(path))  # the SHA-256 from the sidecar
    jax.tree.map(np.testing.assert_array_equal, loaded, params)

    weights.sidecar_path(path).write_text(f"{'0' * 64}  fid_inception.npz\n")
    with pytest.raises(ValueError, match=f"SHA-256 mismatch for {path}: file has {sha256}"):
        weights.load_inception_params(str(path))
    with pytest.raises(FileNotFoundError, match="--output gs://.*/absent.npz"):
        weights.load_inception_params(str(gcs_dir / "absent.npz"))


def test_reference_statistics_on_gcs(gcs_emulator, gcs_dir):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(6), np.cov(rng.standard_normal((20, 6)), rowvar=False)
    ours = gcs_dir / "stats.npz"
    statistics.save_reference_statistics(str(ours), mu, sigma)
    loaded_mu, loaded_sigma = statistics.load_reference_statistics(str(ours))
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)

    adm = gcs_dir / "VIRTUAL_imagenet64_labeled.npz"  # a reference batch: images, mu, sigma
    files.save_npz(adm, arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=mu, sigma=sigma)
    np.testing.assert_array_equal(statistics.load_reference_statistics(str(adm))[1], sigma)
    assert _object_names(gcs_emulator, gcs_dir) == [adm.name, ours.name]
    with pytest.raises(FileNotFoundError, match="reference statistics: no file at gs://"):
        statistics.load_reference_statistics(str(gcs_dir / "absent.npz"))


def test_x_var_table_on_gcs(gcs_emulator, gcs_dir):
    times, x_vars = np.linspace(0.0, 1.0, 5), np.array([0.0, 0.01, 0.03, 0.02, 0.05])
    path = calibrate.table_path(str(gcs_dir), step=100)
    assert path == f"{gcs_dir}/addim_x_var_step100.npz"
    calibrate.save_x_var_table(path, times, x_vars, eta=0.5, step=100, num_examples=64)
    assert _object_names(gcs_emulator, gcs_dir) == ["addim_x_var_step100.npz"]
    t = np.array([0.1, 0.5, 0.9], np.float32)
    np.testing.assert_array_equal(
        calibrate.load_x_var_table(path)(t, None, None),
        samplers.table_x_var_fn(times, x_vars)(t, None, None),
    )
    with files.open_npz(path) as table:
        recorded = float(table["eta"]), int(table["step"]), int(table["num_examples"])
    assert recorded == (0.5, 100, 64)
    with pytest.raises(FileNotFoundError, match="x_var_table: no file at gs://"):
        calibrate.load_x_var_table(str(gcs_dir / "absent.npz"))


@pytest.mark.slow
def test_student_loads_its_teacher_from_a_gcs_workdir(gcs_emulator, gcs_dir):
    """A teacher workdir on gs:// (config.json, an orbax checkpoint written through tensorstore's
    GCS driver) restores into a student exactly as distillation loads it."""
    teacher_dir = str(gcs_dir / "teacher")
    teacher = presets.digits_diffusion("model=tiny")
    teacher.ema_decays = (0.9, 0.99)
    state = train.Trainer(RunSetup.create(teacher)).init_state()
    checkpointing.write_config(teacher_dir, teacher)
    ckpt = checkpointing.Checkpointer(teacher_dir)
    ckpt.save(7, state, data_state={"epoch": 0})
    ckpt.wait()
    ckpt.close()
    names = _object_names(gcs_emulator, gcs_dir)
    assert "teacher/config.json" in names
    assert any(name.startswith("teacher/checkpoints/7/ema_params/") for name in names)
    assert epath.Path(teacher_dir).is_dir()  # what train.train checks before distilling

    student = presets.digits_mcm("steps=2,method=cd,model=tiny")
    student.teacher.update(workdir=teacher_dir, ema_index=1)
    teacher_config = run_setup.check_teacher_matches(student)  # reads config.json from gs://
    assert tuple(teacher_config.ema_decays) == (0.9, 0.99)
    params = run_setup.load_teacher(
        student, train.Trainer(RunSetup.create(student), teacher_config).abstract_teacher_params
    )
    jax.tree.map(np.testing.assert_array_equal, params, state.ema_params[1])
