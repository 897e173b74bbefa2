"""The method as pure functions: noise schedules, DDIM / inverse DDIM / aDDIM steps, samplers, the
losses (diffusion, multistep consistency, progressive distillation) and what a network is
conditioned on. Imports only jax, flax, optax and numpy (tests/test_architecture.py)."""
