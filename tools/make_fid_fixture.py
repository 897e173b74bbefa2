"""Regenerate tests/fixtures/fid_parity.{npz,json}: pytorch-fid's outputs on seeded random weights.

The weights are drawn with numpy from a seed (`random_state_dict`, imported by tests/test_fid.py
too), so the test rebuilds them without torch; the fixture keeps only the seed, the state-dict
layout, the input images and pytorch-fid's outputs. Needs torch, torchvision and pytorch-fid,
best in a venv of its own (never the project's):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid
    /tmp/torchvenv/bin/python tools/make_fid_fixture.py
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

FIXTURE_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SEED = 20151205
IMAGES_PER_RESOLUTION = 2
RESOLUTIONS = (32, 64, 128, 299)
# Plain bilinear resizes (NHWC in, size out) that reach torch's downsampling and clamping paths.
RESIZE_CASES = {"down": ((1, 23, 19, 3), (7, 11)), "mixed": ((2, 5, 6, 3), (13, 4))}


def random_state_dict(seed: int, layout: list[tuple[str, list[int], str]]) -> dict[str, np.ndarray]:
    """Seeded weights in pytorch-fid's state-dict layout, scaled so activations stay O(1).

    He-normal conv kernels; BatchNorm gamma ~ 1, small beta and running mean, running var ~ 1.
    `layout` lists (key, shape, dtype) in state-dict order; one generator walks it in order.
    """
    rng = np.random.default_rng(seed)
    state_dict = {}
    for key, shape, dtype in layout:
        if key.endswith(".conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif key.endswith(".bn.weight"):
            value = rng.uniform(0.8, 1.2, shape)
        elif key.endswith((".bn.bias", ".bn.running_mean")):
            value = 0.1 * rng.standard_normal(shape)
        elif key.endswith(".bn.running_var"):
            value = rng.uniform(0.8, 1.25, shape)
        elif key.endswith(".num_batches_tracked"):
            value = np.zeros(shape)
        elif key == "fc.weight":
            value = rng.standard_normal(shape) / np.sqrt(shape[1])
        elif key == "fc.bias":
            value = 0.01 * rng.standard_normal(shape)
        else:
            raise KeyError(f"no generator for state-dict key {key!r}")
        state_dict[key] = value.astype(dtype)
    return state_dict


def load_fixture_layout(path: pathlib.Path) -> tuple[int, list[tuple[str, list[int], str]]]:
    """(seed, layout) from the fixture's json."""
    spec = json.loads(path.read_text())
    return spec["seed"], [(key, shape, dtype) for key, shape, dtype in spec["state_dict"]]


def _pytorch_fid_model(seed: int):
    """pytorch-fid's FID InceptionV3 with `random_state_dict` weights, nothing downloaded.

    The weight download is replaced by a function that draws the weights for the layout of the
    model under construction; pytorch-fid then loads them with strict=True.
    """
    import pytorch_fid.inception as pytorch_fid_inception
    import torch
    import torchvision

    built = []
    inception_v3 = torchvision.models.inception_v3

    def recording_inception_v3(*args, **kwargs):
        built.append(inception_v3(*args, **kwargs))
        return built[-1]

    layout = []

    def seeded_weights(url, **kwargs):
        del url, kwargs
        for key, tensor in built[-1].state_dict().items():
            layout.append((key, list(tensor.shape), str(tensor.dtype).removeprefix("torch.")))
        return {k: torch.from_numpy(v) for k, v in random_state_dict(seed, layout).items()}

    torchvision.models.inception_v3 = recording_inception_v3
    pytorch_fid_inception.load_state_dict_from_url = seeded_weights
    try:
        model = pytorch_fid_inception.InceptionV3(
            [3], resize_input=True, normalize_input=True, use_fid_inception=True
        )
    finally:
        torchvision.models.inception_v3 = inception_v3
    return model.eval(), layout


def _one_entry_per_line(spec: dict) -> str:
    """json with each state-dict entry on a line of its own, so diffs stay readable."""
    head = json.dumps({k: v for k, v in spec.items() if k != "state_dict"}, indent=1)[:-2]
    entries = ",\n".join("  " + json.dumps(entry) for entry in spec["state_dict"])
    return f'{head},\n "state_dict": [\n{entries}\n ]\n}}\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=pathlib.Path, default=FIXTURE_DIR)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    model, layout = _pytorch_fid_model(SEED)
    rng = np.random.default_rng(SEED + 1)
    arrays = {}
    with torch.no_grad():
        for resolution in RESOLUTIONS:
            shape = (IMAGES_PER_RESOLUTION, resolution, resolution, 3)
            images = rng.integers(0, 256, shape, np.uint8)
            # pytorch-fid's ToTensor: HWC uint8 -> CHW float / 255.
            batch = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
            pool = model(batch)[0].squeeze(3).squeeze(2).numpy()
            arrays[f"images_{resolution}"] = images
            arrays[f"features_{resolution}"] = pool
            print(f"{resolution:>3} px: features mean {pool.mean():.4f} std {pool.std():.4f} "
                  f"max {pool.max():.4f} zero fraction {(pool == 0).mean():.3f}")
        for name, (shape, size) in RESIZE_CASES.items():
            source = rng.uniform(0, 1, shape).astype(np.float32)
            resized = F.interpolate(torch.from_numpy(source).permute(0, 3, 1, 2), size=size,
                                    mode="bilinear", align_corners=False)
            arrays[f"resize_{name}_input"] = source
            arrays[f"resize_{name}_output"] = resized.permute(0, 2, 3, 1).numpy()

    args.output_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output_dir / "fid_parity.npz", **arrays)
    spec = {
        "about": "pytorch-fid InceptionV3 on tools/make_fid_fixture.py:random_state_dict(seed)",
        "torch": torch.__version__,
        "seed": SEED,
        "state_dict": layout,
    }
    (args.output_dir / "fid_parity.json").write_text(_one_entry_per_line(spec))
    print(f"wrote {args.output_dir}/fid_parity.npz and fid_parity.json")


if __name__ == "__main__":
    main()
