"""Per-chip peak bf16 throughput and memory, looked up from `jax.Device.device_kind`.

MFU divides measured model TFLOP/s by the chip's peak, so a wrong peak gives a wrong MFU without
any error. The figures are the vendors' data-sheet numbers: dense (no structured sparsity) bf16
matrix throughput per chip and the chip's HBM capacity. A device whose kind matches no entry
gets no peak: the trainer and the benchmark then report no MFU rather than one against a guess.

`config.peak_tflops_per_device` = 0 (the default) means "look the device up here"; a positive
value overrides the table (e.g. for a chip it does not list, or a power-capped part).
"""

from __future__ import annotations

import dataclasses
import re

GIB = 2**30
GB = 10**9


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator model: `kind` is a regular expression over `device_kind` (full match)."""

    name: str
    kind: str
    peak_bf16_tflops: float
    hbm_bytes: int


# Sources: Cloud TPU system architecture pages (v4, v5e, v5p, v6e) and NVIDIA's A100, H100, H200
# and HGX B200 data sheets. NVIDIA data sheets quote bf16 "with sparsity"; dense is half of it.
# NVIDIA device kinds are the CUDA device names ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB").
CHIPS: tuple[Chip, ...] = (
    Chip("v4", r"TPU v4", 275.0, 32 * GIB),
    Chip("v5e", r"TPU v5 ?lite|TPU v5e", 197.0, 16 * GIB),
    Chip("v5p", r"TPU v5p?", 459.0, 95 * GIB),
    Chip("v6e", r"TPU v6 ?lite|TPU v6e", 918.0, 32 * GIB),
    Chip("a100-40gb", r"NVIDIA A100.*40GB.*", 312.0, 40 * GB),
    Chip("a100-80gb", r"NVIDIA A100.*80GB.*", 312.0, 80 * GB),
    Chip("h100-pcie", r"NVIDIA H100 PCIe", 756.0, 80 * GB),
    Chip("h100-nvl", r"NVIDIA H100 NVL", 835.0, 94 * GB),
    Chip("h100", r"NVIDIA H100( 80GB HBM3| SXM.*)?", 989.0, 80 * GB),
    Chip("h200-nvl", r"NVIDIA H200 NVL", 835.0, 141 * GB),
    Chip("h200", r"NVIDIA H200", 989.0, 141 * GB),
    Chip("b200", r"NVIDIA B200", 2250.0, 180 * GB),
)


def chip_for_kind(device_kind: str) -> Chip | None:
    """The table entry whose pattern matches all of `device_kind`, or None for an unknown device."""
    for chip in CHIPS:
        if re.fullmatch(chip.kind, device_kind.strip()):
            return chip
    return None


def chip_by_name(name: str) -> Chip:
    """The table entry called `name` (e.g. "v5e", "h100"); ValueError listing the names if none."""
    for chip in CHIPS:
        if chip.name == name:
            return chip
    raise ValueError(f"unknown chip {name!r}; known: {', '.join(c.name for c in CHIPS)}")


def peak_tflops(configured: float, device_kind: str) -> float | None:
    """The peak to divide by for MFU: `configured` if positive, else the table's for
    `device_kind`, else None (unknown device: report no MFU)."""
    if configured > 0:
        return float(configured)
    chip = chip_for_kind(device_kind)
    return chip.peak_bf16_tflops if chip else None
