"""Parts of the eval job (`mcm_jax.eval.evaluate`): its config, resumable sampling, metrics, reports."""
