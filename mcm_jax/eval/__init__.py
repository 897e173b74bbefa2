"""Parts of the eval job (`mcm_jax.evaluate`): its config, resumable sampling, metrics, reports."""
