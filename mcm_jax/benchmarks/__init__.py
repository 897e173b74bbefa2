"""Benchmarks: scripts that print throughput figures (`python -m mcm_jax.benchmarks.<name>`)."""
