"""Data sets shipped with mcm_jax. Importing `mcm_jax.datasets.digits` registers the TFDS builder
`digits`; this package itself stays free of TensorFlow so the digits split loads without it."""

from mcm_jax.datasets.digits_split import load_digits_split

__all__ = ["load_digits_split"]
