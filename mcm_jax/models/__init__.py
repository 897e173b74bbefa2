"""UViT models (docs/method.md §7): named configurations, construction, size and cost.

config = model_config("imagenet64_small")
model = build(config, channels=3, num_classes=1000)  # the data's (mcm_jax.config.data_config)
v_hat = model.apply(variables, z, logsnr, label, train=True, rngs={"dropout": key})
# build(..., text_width=W > 0): also text=(batch, length, W) and text_mask=(batch, length) bool
"""

from mcm_jax.models.configs import model_config, NAMES
from mcm_jax.models.flops import flops_per_example, param_count
from mcm_jax.models.uvit import build, UViT
from mcm_jax.models.validation import validate

__all__ = ["NAMES", "UViT", "build", "flops_per_example", "model_config", "param_count", "validate"]
