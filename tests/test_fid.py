"""mcm_jax.eval.fid: parity with pytorch-fid, weights on disk, statistics, Fréchet distance.

The parity fixture comes from tools/make_fid_fixture.py: pytorch-fid's outputs on weights drawn
with numpy from a seed, which these tests draw again without torch.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mcm_jax.eval import fid
from mcm_jax.eval.fid import convert, inception, reference, weights

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
RESOLUTIONS = (32, 64, 128, 299)
# Features are O(1) (max ~8); float32 paths through ~50 layers differ by a few 1e-6.
RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_TOLERANCE = 2e-5


def _fixture_tool():
    path = ROOT / "tools" / "make_fid_fixture.py"
    spec = importlib.util.spec_from_file_location("make_fid_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fixture_arrays():
    with np.load(FIXTURES / "fid_parity.npz", allow_pickle=False) as archive:
        return dict(archive)


@pytest.fixture(scope="module")
def state_dict():
    tool = _fixture_tool()
    seed, layout = tool.load_fixture_layout(FIXTURES / "fid_parity.json")
    return tool.random_state_dict(seed, layout)


@pytest.fixture(scope="module")
def params(state_dict):
    return fid.convert_pytorch_fid_state_dict(state_dict)


@pytest.fixture(scope="module")
def saved_weights(params, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "fid_inception.npz"
    return path, weights.save_params(params, path)


def _assert_features_close(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    relative_to_scale = np.abs(actual - expected).max() / np.abs(expected).max()
    assert relative_to_scale < RELATIVE_TOLERANCE
    np.testing.assert_allclose(actual, expected, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE)


# --- Fréchet distance and statistics -------------------------------------------------------


def _random_statistics(rng, dim, samples, offset=0.0):
    features = rng.standard_normal((samples, dim)) @ rng.standard_normal((dim, dim)) / dim + offset
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _frechet_distance_with_sqrtm(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's and ADM's formula: scipy's sqrtm of the product, real part."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("samples", [500, 40], ids=["full_rank", "rank_deficient"])
def test_frechet_distance_matches_scipy_sqrtm(samples):
    rng = np.random.default_rng(0)
    mu1, sigma1 = _random_statistics(rng, 64, samples)
    mu2, sigma2 = _random_statistics(rng, 64, samples, offset=0.1)
    expected = _frechet_distance_with_sqrtm(mu1, sigma1, mu2, sigma2)
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "samples, tolerance",
    # A singular sigma leaves round-off of order 1e-17 on its null space; square roots turn that
    # into ~1e-8 of the trace, as with scipy's sqrtm.
    [(500, 1e-10), (30, 1e-6)],
    ids=["full_rank", "singular"],
)
def test_frechet_distance_is_zero_for_identical_statistics(samples, tolerance):
    mu, sigma = _random_statistics(np.random.default_rng(1), 64, samples)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < tolerance * np.trace(sigma)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sigma1, sigma2"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_streamed_statistics_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(2)
    features = rng.standard_normal((50, 16)) + 1e4  # a large common offset must not cancel
    mask = rng.uniform(size=50) < 0.8
    accumulator = fid.StatisticsAccumulator()
    for start in range(0, 50, 16):
        accumulator.update(features[start : start + 16], mask[start : start + 16])
    mu, sigma = accumulator.finalize()
    assert accumulator.count == mask.sum()
    np.testing.assert_allclose(mu, features[mask].mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(features[mask], rowvar=False), rtol=1e-9, atol=1e-9)
    mu_all, sigma_all = fid.compute_statistics(features)
    np.testing.assert_allclose(sigma_all, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-9)
    assert mu_all.dtype == sigma_all.dtype == np.float64


# --- Parity with pytorch-fid ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_features_match_pytorch_fid(params, fixture_arrays, resolution):
    actual = fid.features(params, fixture_arrays[f"images_{resolution}"], precision="highest")
    assert actual.dtype == np.float32 and actual.shape[1] == fid.FEATURE_DIM
    _assert_features_close(actual, fixture_arrays[f"features_{resolution}"])


# pytorch-fid's TF32 convolutions on a GPU miss this; the FID path must not.
FID_PATH_TOLERANCE = 1e-3


def _error_relative_to_scale(actual, expected):
    return np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max()


@pytest.mark.slow
def test_bf16_3x_features_match_pytorch_fid_within_1e3(params, fixture_arrays):
    """Three bfloat16 products per multiply (the GPU's FID path) keep features within 1e-3 of
    pytorch-fid's float32 CPU features (measured: 6e-6 of their scale), where bfloat16 weights
    alone do not."""
    images, expected = fixture_arrays["images_299"], fixture_arrays["features_299"]
    assert _error_relative_to_scale(
        fid.features(params, images, precision="bf16_3x"), expected
    ) < FID_PATH_TOLERANCE / 10
    one_product = jax.tree.map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32), params)
    assert _error_relative_to_scale(
        fid.features(one_product, images, precision="bf16_3x"), expected
    ) > FID_PATH_TOLERANCE  # rounding the weights alone to bfloat16 already misses it


def test_bf16_3x_convolution_is_float32_to_16_bits():
    rng = np.random.default_rng(0)
    lhs = rng.standard_normal((2, 9, 9, 16)).astype(np.float32)
    rhs = rng.standard_normal((3, 3, 16, 8)).astype(np.float32)
    args = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    exact = jax.lax.conv_general_dilated(lhs, rhs, precision=jax.lax.Precision.HIGHEST, **args)
    split = inception.bf16_3x_conv(lhs, rhs, **args)
    assert split.dtype == jnp.float32
    assert _error_relative_to_scale(split, exact) < 2**-15
    one = jax.lax.conv_general_dilated(
        lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), preferred_element_type=jnp.float32,
        **args,
    )
    assert _error_relative_to_scale(one, exact) > 2**-10


def test_the_fid_path_uses_bf16_3x_on_gpus_only(monkeypatch):
    assert inception.fid_precision() == "highest"  # this CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert inception.fid_precision() == "bf16_3x"


@pytest.mark.parametrize("case", ["down", "mixed"])
def test_resize_matches_torch_interpolate(fixture_arrays, case):
    expected = fixture_arrays[f"resize_{case}_output"]
    source = fixture_arrays[f"resize_{case}_input"]
    actual = fid.resize_bilinear_like_torch(source, *expected.shape[1:3])
    np.testing.assert_allclose(actual, expected, atol=1e-6)


@pytest.mark.slow
def test_sharded_features_match_single_device(params, fixture_arrays):
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "replica"))
    features_on_mesh = fid.make_sharded_features(mesh, data_axes="data")
    images = np.tile(fixture_arrays["images_32"], (2, 1, 1, 1))  # 4 images, one per data shard
    actual = features_on_mesh(fid.replicate_params(params, mesh), images)
    assert actual.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), 2)
    _assert_features_close(actual, np.tile(fixture_arrays["features_32"], (2, 1)))
    with pytest.raises(ValueError, match="must divide by the 4 devices"):
        features_on_mesh(params, images[:3])


def test_features_reject_float_and_grey_images(params):
    with pytest.raises(TypeError, match="uint8"):
        fid.features(params, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        fid.features(params, np.zeros((1, 32, 32, 1), np.uint8))


def test_uint8_from_model_range_recovers_pixels_and_makes_rgb():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    recovered = fid.uint8_from_model_range(pixels.astype(np.float32) / 127.5 - 1)
    assert recovered.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(recovered, np.repeat(pixels, 3, axis=-1))


# --- Converter and weight files ------------------------------------------------------------


def test_conversion_folds_batchnorm_into_hwio_kernels(state_dict, params):
    prefix = "Mixed_6b.branch7x7_2"  # a (1, 7) kernel: the transpose must put 7 on W
    conv = params["Mixed_6b"]["branch7x7_2"]["conv"]
    gamma, beta, mean, var = (state_dict[f"{prefix}.bn.{name}"]
                              for name in ("weight", "bias", "running_mean", "running_var"))
    scale = gamma / np.sqrt(var + 1e-3)
    expected_kernel = np.transpose(state_dict[f"{prefix}.conv.weight"], (2, 3, 1, 0)) * scale
    expected_bias = beta - mean * scale
    assert conv["kernel"].shape == (1, 7, 128, 128)
    np.testing.assert_allclose(conv["kernel"], expected_kernel, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(conv["bias"], expected_bias, rtol=1e-6, atol=1e-7)


def test_conversion_names_missing_and_unexpected_keys(state_dict):
    broken = {k: v for k, v in state_dict.items() if k != "Mixed_7c.branch_pool.bn.running_var"}
    broken["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
    expected = r"missing \['Mixed_7c.branch_pool.bn.running_var'\].*unexpected \['AuxLogits"
    with pytest.raises(KeyError, match=expected):
        fid.convert_pytorch_fid_state_dict(broken)


def test_saved_weights_round_trip_and_are_byte_reproducible(params, saved_weights, tmp_path):
    path, sha256 = saved_weights
    assert weights.sidecar_path(path).read_text() == f"{sha256}  {path.name}\n"
    assert weights.save_params(params, tmp_path / "again.npz") == sha256
    loaded = fid.load_inception_params(path)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    jax.tree.map(np.testing.assert_array_equal, fid.load_inception_params(path, sha256), params)


def test_convert_command_writes_npz_and_sha256_without_torch(
    state_dict, params, monkeypatch, tmp_path, capsys
):
    pth = tmp_path / "pt_inception.pth"
    pth.write_bytes(b"read by read_pth_state_dict, replaced here")
    monkeypatch.setattr(convert, "read_pth_state_dict", lambda path: state_dict)
    output = tmp_path / "out" / "fid_inception.npz"
    convert.main(["convert", "--input", str(pth), "--output", str(output)])
    sha256 = weights.file_sha256(output)
    assert sha256 in capsys.readouterr().out
    assert weights.sidecar_path(output).read_text().split()[0] == sha256
    converted = fid.load_inception_params(output)
    jax.tree.map(np.testing.assert_array_equal, converted, params)


def test_convert_command_without_torch_says_pip_install_torch(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(SystemExit, match="pip install torch"):
        convert.read_pth_state_dict(tmp_path / "x.pth")


def test_loader_refuses_wrong_sha256(saved_weights):
    path, sha256 = saved_weights
    wrong = ("0" if sha256[0] != "0" else "1") + sha256[1:]
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        fid.load_inception_params(path, expected_sha256=wrong)


def test_loader_refuses_pickled_arrays_even_with_matching_sha256(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **{"Conv2d_1a_3x3/conv/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickle"):
        fid.load_inception_params(path, expected_sha256=weights.file_sha256(path))


def test_loader_refuses_file_without_sha256(tmp_path):
    path = tmp_path / "no_sidecar.npz"
    np.savez(path, x=np.zeros(1, np.float32))
    with pytest.raises(FileNotFoundError, match="no_sidecar.npz.sha256"):
        fid.load_inception_params(path)


def test_missing_weights_message_gives_the_commands_that_make_them(tmp_path):
    path = tmp_path / "fid_inception.npz"
    with pytest.raises(FileNotFoundError) as error:
        fid.load_inception_params(path)
    message = str(error.value)
    assert weights.PYTORCH_FID_WEIGHTS_URL in message
    convert_command = "python -m mcm_jax.eval.fid.convert --input pt_inception-2015-12-05-6726825d.pth"
    assert f"{convert_command} --output {path}" in message


# --- Reference statistics ------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["mu", "sigma"])
def test_reference_without_mu_or_sigma_names_the_key(tmp_path, missing):
    path = tmp_path / "VIRTUAL_imagenet64_labeled.npz"
    arrays = {"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "mu": np.zeros(4), "sigma": np.eye(4)}
    del arrays[missing]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=f"no member\\(s\\) \\['{missing}'\\]"):
        fid.load_reference_statistics(path)


def test_adm_style_reference_loads_and_ours_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = _random_statistics(rng, 8, 20)
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=mu, sigma=sigma,
             mu_s=mu[:4], sigma_s=sigma[:4, :4])
    loaded_mu, loaded_sigma = fid.load_reference_statistics(tmp_path / "adm.npz")
    np.testing.assert_array_equal(loaded_mu, mu)
    fid.save_reference_statistics(tmp_path / "ours.npz", mu, sigma)
    np.testing.assert_array_equal(fid.load_reference_statistics(tmp_path / "ours.npz")[1], sigma)


def test_statistics_of_batches_skips_padding_and_matches_numpy():
    rng = np.random.default_rng(4)
    images = rng.uniform(-1, 1, (10, 4, 4, 1)).astype(np.float32)
    masks = [np.ones(4, bool), np.ones(4, bool), np.array([True, True, False, False])]
    padded = np.concatenate([images, np.zeros((2, 4, 4, 1), np.float32)])
    batches = [{"image": padded[i : i + 4], "label": np.zeros(4), "mask": masks[i // 4]}
               for i in range(0, 12, 4)]

    def pixel_features(uint8_images):  # a stand-in for the Inception: flattened pixels
        return np.asarray(uint8_images, np.float64).reshape(len(uint8_images), -1)

    mu, sigma, count = reference.statistics_of_batches(pixel_features, batches)
    expected = pixel_features(fid.uint8_from_model_range(images))
    assert count == 10
    np.testing.assert_allclose(mu, expected.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(expected, rowvar=False), rtol=1e-9, atol=1e-9)


DIGITS_FID_CONFIG = """
import ml_collections
from mcm_jax.data import input_pipeline

def get_config(data_dir):
    config = ml_collections.ConfigDict()
    config.data = input_pipeline.default_data_config("digits")
    config.data.data_dir = data_dir
    return config
"""


@pytest.mark.slow
def test_reference_command_on_digits(saved_weights, tmp_path):
    """The command end to end on the bundled digits (TFDS builds them offline)."""
    weights_path, _ = saved_weights
    config_file, output = tmp_path / "digits_fid.py", tmp_path / "digits_stats.npz"
    config_file.write_text(DIGITS_FID_CONFIG)
    command = [
        sys.executable, "-m", "mcm_jax.eval.fid.reference",
        f"--config={config_file}:{tmp_path / 'tfds'}", f"--weights={weights_path}",
        f"--output={output}", "--num_examples=3", "--batch_size=2",
    ]  # two devices, batches of 2: the second is half padding, which must not count
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "from 3 images" in result.stdout  # the padding row is left out
    mu, sigma = fid.load_reference_statistics(output)
    assert mu.shape == (fid.FEATURE_DIM,) and np.all(mu >= 0)  # means of ReLU outputs
    assert np.isfinite(sigma).all() and np.array_equal(sigma, sigma.T)


def test_package_imports_without_torch_or_tensorflow():
    code = ("import sys, mcm_jax.eval.fid; "
            "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
