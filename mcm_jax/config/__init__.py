"""The experiment configuration: every field's default and check (config_lib), the data sets
(data_config) and eval (eval_config) fields, and the families behind configs/*.py (presets).
TF-free, so a config loads on any machine."""
