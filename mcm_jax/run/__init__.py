"""What every job of a run shares: its command line (cli), processes (distributed, multihost),
mesh (sharding), model and sampler set-up (run_setup, batch_sampler), checkpoints
(checkpointing) and the workdir it owns (resume_config, workdir_lock)."""
