"""Data sets shipped with mcm_jax. Importing this package registers the TFDS builder `digits`."""

from mcm_jax.datasets.digits import Digits
from mcm_jax.datasets.digits_split import load_digits_split

__all__ = ["Digits", "load_digits_split"]
