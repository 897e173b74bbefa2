"""Image helpers: [-1, 1] floats to uint8, grids of samples, PNG files, matplotlib figures."""

from __future__ import annotations

import io
import math

import numpy as np
from etils import epath


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to uint8 [0, 255], rounding to nearest."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_grey(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC with 1 or 3 channels to 1 channel, the mean of R, G and B rounded to nearest:
    grey images stored as RGB (captioned digits) come back exactly."""
    images = np.asarray(images)
    if images.shape[-1] == 1:
        return images
    return np.round(images.mean(axis=-1, keepdims=True)).astype(np.uint8)


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tiles uint8 NHWC images into one HWC image, `columns` wide (square by default)."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = image
    return grid


def save_png(path: str, image: np.ndarray) -> None:
    """Writes an HWC uint8 image (C = 1 or 3) as PNG (local or gs:// paths)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def save_figure(figure, path: str | epath.Path, dpi: int = 100) -> None:
    """Writes a matplotlib figure as PNG (local or gs:// paths) and closes it."""
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    epath.Path(path).write_bytes(buffer.getvalue())


def write_grid(workdir: str, name: str, samples: np.ndarray, writer=None, step: int = 0) -> str:
    """Saves a grid of uint8 samples as <workdir>/<name>.png and, given a clu writer, to TensorBoard."""
    grid = make_grid(samples)
    path = str(epath.Path(workdir) / f"{name}.png")
    save_png(path, grid)
    if writer is not None:
        writer.write_images(step, {name.split("_")[0]: grid[None]})
    return path
