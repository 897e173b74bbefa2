"""The peak-throughput table behind MFU: device kinds as JAX reports them, and overrides."""

import pytest

from mcm_jax.config import config_lib, presets
from mcm_jax.train import hardware


@pytest.mark.parametrize(
    "device_kind,name,peak",
    [
        ("TPU v4", "v4", 275.0),
        ("TPU v5 lite", "v5e", 197.0),
        ("TPU v5e", "v5e", 197.0),
        ("TPU v5", "v5p", 459.0),
        ("TPU v5p", "v5p", 459.0),
        ("TPU v6 lite", "v6e", 918.0),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb", 312.0),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb", 312.0),
        ("NVIDIA A100 80GB PCIe", "a100-80gb", 312.0),
        ("NVIDIA H100 80GB HBM3", "h100", 989.0),
        ("NVIDIA H100 PCIe", "h100-pcie", 756.0),
        ("NVIDIA H100 NVL", "h100-nvl", 835.0),
        ("NVIDIA H200", "h200", 989.0),
        ("NVIDIA H200 NVL", "h200-nvl", 835.0),
        ("NVIDIA B200", "b200", 2250.0),
    ],
)
def test_known_devices_get_their_data_sheet_peak(device_kind, name, peak):
    chip = hardware.chip_for_kind(device_kind)
    assert chip is not None and chip.name == name
    assert hardware.peak_tflops(0.0, device_kind) == peak
    assert hardware.chip_by_name(name) is chip


@pytest.mark.parametrize(
    "device_kind",
    ["cpu", "TPU v3", "TPU v4 lite", "NVIDIA GB200", "NVIDIA GH200 480GB", "NVIDIA L4",
     "Tesla V100-SXM2-16GB"],
)
def test_unknown_devices_get_no_peak_so_no_mfu(device_kind):
    assert hardware.chip_for_kind(device_kind) is None
    assert hardware.peak_tflops(0.0, device_kind) is None


def test_a_positive_config_value_overrides_the_table():
    assert hardware.peak_tflops(123.0, "NVIDIA H100 80GB HBM3") == 123.0
    assert hardware.peak_tflops(123.0, "cpu") == 123.0
    assert config_lib.base_config().peak_tflops_per_device == 0  # the default looks the device up
    config = presets.digits_diffusion("model=tiny")
    config_lib.validate(config, num_devices=1)
    config.peak_tflops_per_device = -1.0
    with pytest.raises(ValueError, match="config.peak_tflops_per_device"):
        config_lib.validate(config, num_devices=1)


def test_chip_names_are_unique_and_errors_list_them():
    names = [chip.name for chip in hardware.CHIPS]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="v5e"):
        hardware.chip_by_name("v7")
