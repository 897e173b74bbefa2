r"""FID reference statistics: ADM's reference batches, or mu/sigma computed from a TFDS split.

    python -m mcm_jax.eval.fid.reference --config=configs/<file>.py[:args] \
        --weights=fid_inception.npz --output=imagenet64_validation_stats.npz \
        [--split=validation] [--num_examples=50000] [--batch_size=256]

runs the project's eval pipeline (`config.data`, images in [-1, 1]) through the FID Inception on
all local devices and writes an .npz with float64 `mu` and `sigma` (the keys of ADM's reference
batches, so either kind loads with `statistics.load_reference_statistics`). One process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np

from mcm_jax.eval.fid import inception, sharded, statistics, weights


def statistics_of_batches(
    features_fn: Callable[[jax.Array], jax.Array], batches: Iterable[Mapping[str, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, count) of `features_fn` over eval batches {"image": [-1, 1] NHWC, "mask"}.

    Images become uint8 RGB as generated samples do; padded rows (mask False) are left out.
    """
    accumulator = statistics.StatisticsAccumulator()
    for batch in batches:
        batch_features = features_fn(inception.uint8_from_model_range(batch["image"]))
        accumulator.update(np.asarray(batch_features), batch.get("mask"))
    mu, sigma = accumulator.finalize()
    return mu, sigma, accumulator.count


def compute_reference_statistics(
    data_config,
    params: dict,
    *,
    batch_size: int,
    split: str | None = None,
    num_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, count) of FID features over a split of the project's eval pipeline."""
    from mcm_jax.data import input_pipeline  # TensorFlow only here, never on import of mcm_jax.fid

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    features_on_mesh = sharded.make_sharded_features(mesh)
    params = sharded.replicate_params(params, mesh)
    batches = input_pipeline.create_eval_iterator(
        data_config, global_batch_size=batch_size, split=split, num_examples=num_examples
    )
    return statistics_of_batches(lambda images: features_on_mesh(params, images), batches)


def _define_flags() -> None:
    """The command's flags; defined only when run as a command, so importers keep theirs."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiment config; its .data is used")
    flags.DEFINE_string("weights", None, "converted FID Inception .npz (its .sha256 beside it)")
    flags.DEFINE_string("output", None, "the statistics .npz to write")
    flags.DEFINE_string("split", None, "TFDS split; default: the pipeline's eval split")
    flags.DEFINE_integer("num_examples", None, "images to use; default: the whole split",
                         lower_bound=1)
    flags.DEFINE_integer("batch_size", 256, "global batch; must divide by the device count",
                         lower_bound=1)
    flags.mark_flags_as_required(["config", "weights", "output"])


def _main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    try:
        params = weights.load_inception_params(args.weights)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--weights: {e}") from None
    mu, sigma, count = compute_reference_statistics(
        args.config.data,
        params,
        batch_size=args.batch_size,
        split=args.split,
        num_examples=args.num_examples,
    )
    statistics.save_reference_statistics(args.output, mu, sigma)
    print(f"wrote {args.output}: mu {mu.shape}, sigma {sigma.shape} from {count} images")


if __name__ == "__main__":
    from mcm_jax.run import cli

    _define_flags()
    cli.run(_main)
