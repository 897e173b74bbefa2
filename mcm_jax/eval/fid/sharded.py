"""FID features over a device mesh: images split along the batch, Inception params replicated."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mcm_jax.eval.fid import inception


def replicate_params(params: dict, mesh: Mesh) -> dict:
    """Put the Inception params on every device of `mesh` once, so calls do not re-send them."""
    return jax.device_put(params, NamedSharding(mesh, PartitionSpec()))


def make_sharded_features(
    mesh: Mesh, *, data_axes: str | tuple[str, ...] = "data", precision: str | None = None
) -> Callable[[dict, jax.Array], jax.Array]:
    """A jitted `features(params, images_uint8_nhwc) -> (N, 2048)` sharded over `mesh`.

    Images and features are split along the batch over `data_axes` (NamedSharding in and out);
    the batch must divide by those axes' total size. Images are a global jax.Array (or, in a
    single process, a host array). Preprocessing and network compile together, once per shape.
    `precision`: one of inception.PRECISIONS, default `inception.fid_precision()`.
    """
    precision = precision or inception.fid_precision()
    batch_sharding = NamedSharding(mesh, PartitionSpec(data_axes))
    replicated = NamedSharding(mesh, PartitionSpec())
    axes = (data_axes,) if isinstance(data_axes, str) else data_axes
    shards = math.prod(mesh.shape[axis] for axis in axes)

    def apply(params: dict, images: jax.Array) -> jax.Array:
        net = inception.InceptionV3(precision=precision)
        return net.apply({"params": params}, inception.preprocess(images))

    sharded_features = jax.jit(
        apply, in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding
    )

    def features_on_mesh(params: dict, images_uint8_nhwc: jax.Array) -> jax.Array:
        inception.check_images(images_uint8_nhwc)
        if images_uint8_nhwc.shape[0] % shards:
            raise ValueError(
                f"images: batch {images_uint8_nhwc.shape[0]} must divide by the {shards} "
                f"devices of mesh axes {axes}"
            )
        return sharded_features(params, images_uint8_nhwc)

    return features_on_mesh
