"""The training job: the loop (train), the pure step and optimizer (train_step), preemption, and
the figures about it (hardware peaks, memory estimates, profiles)."""
