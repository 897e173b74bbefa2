"""`mcm_jax.load(workdir)`: a trained run, teacher or student, three lines away from samples.

    import mcm_jax
    run = mcm_jax.load("/tmp/digits_teacher")          # or gs://...; the latest step, EMA 0
    images = run.sample(16)                             # uint8 (16, H, W, C), the run's sampler

The run is rebuilt from its own config.json (run_setup.saved_config) and its EMA parameters
restored from the checkpoint (checkpointing.Checkpointer, checksums verified), sharded over this
process's devices. Sampling is the eval job's sampler (`mcm_jax.run.batch_sampler`): sample i
has the noise normal(fold_in(PRNGKey(seed), i)), so two runs of the same image shape sampled with
the same seed start from the same noise. docs/api.md has a worked example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mcm_jax import images, paths
from mcm_jax.config import config_lib, data_config
from mcm_jax.method import samplers
from mcm_jax.run import checkpointing, run_setup
from mcm_jax.run.batch_sampler import SamplerSetting

Prompts = Sequence[str] | dict[str, np.ndarray]


class Run:
    """A run's config and EMA parameters, with its network as a denoiser and a sampler.

    Attributes: `config` (the run's resolved config), `params` (the EMA parameters, on this
    process's devices), `step` (the checkpoint step), `ema_index`, `workdir`, `setup` (the
    run_setup.RunSetup: model, schedule, mesh).
    """

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, setup: run_setup.RunSetup,
                 params: Any, step: int, ema_index: int):
        self.workdir, self.config, self.setup = workdir, config, setup
        self.params, self.step, self.ema_index = params, step, ema_index
        self._samplers: dict[tuple, Any] = {}
        self._encoder = None
        self._denoise = jax.jit(self._guided_x_hat, static_argnums=4)

    # -- conditions ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Class labels the network takes (0: unconditional or text-conditioned)."""
        return data_config.num_classes(self.config.data)

    @property
    def text(self) -> bool:
        """Whether the network is conditioned on prompts (text-to-image)."""
        return data_config.text_shape(self.config.data) is not None

    def embed(self, prompts: Prompts) -> dict[str, np.ndarray]:
        """{"text": float16 (n, length, width), "text_mask": bool (n, length)} of `prompts`:
        strings are embedded with the T5 encoder that embedded the run's training captions (the
        `encoder_dir` recorded in config.data.data_dir); such a dict is returned as it is."""
        if not self.text:
            raise ValueError("prompts: this run is not text-to-image; give num or labels")
        if isinstance(prompts, dict):
            return {key: np.asarray(prompts[key]) for key in ("text", "text_mask")}
        if isinstance(prompts, str):
            raise ValueError("prompts: give a list of strings, e.g. [\"a photo of a cat\"]")
        if self._encoder is None:
            from mcm_jax.data import embedded_captions
            from mcm_jax.text import text_encoder

            metadata = embedded_captions.read_metadata(self.config.data.data_dir) or {}
            if "encoder_dir" not in metadata:
                raise ValueError(
                    f"prompts: no text encoder recorded in config.data.data_dir="
                    f"{self.config.data.data_dir!r}; embed the prompts yourself and give "
                    "{'text': ..., 'text_mask': ...}"
                )
            self._encoder = text_encoder.TextEncoder.from_dir(
                metadata["encoder_dir"], max_length=self.config.data.text_length
            )
        text, lengths = self._encoder.encode(list(prompts))
        mask = np.arange(text.shape[1])[None] < lengths[:, None]
        return {"text": text, "text_mask": mask}

    def _condition(self, n: int, labels, prompts) -> tuple[np.ndarray, dict | None]:
        """(labels (n,) int32, prompts or None) for n samples."""
        null = config_lib.null_label(self.config)
        if prompts is not None:
            prompts = self.embed(prompts)
            if len(prompts["text"]) != n:
                raise ValueError(f"prompts: {len(prompts['text'])} prompts for {n} samples")
        elif self.text:
            raise ValueError("prompts: a text-to-image run samples from prompts=[...]")
        if labels is None:
            cycled = np.arange(n) % self.num_classes if self.num_classes else np.full(n, null)
            return cycled.astype(np.int32), prompts
        labels = np.asarray(labels, np.int32).reshape(-1)
        if self.text or not self.num_classes:
            raise ValueError("labels: this run is not class-conditional")
        if len(labels) != n or labels.min() < 0 or labels.max() > null:
            raise ValueError(
                f"labels: need {n} labels in 0..{self.num_classes - 1} ({null}: no class), "
                f"got {labels.tolist()}"
            )
        return labels, prompts

    # -- the network -------------------------------------------------------------------------
    def _guided_x_hat(self, params, z, t, cond, guidance: float):
        model = lambda z, t, cond: self.setup.model_fn(params, z, t, cond, False, None)
        null = config_lib.null_label(self.config)
        return samplers.classifier_free_guidance(model, cond, null, guidance)(z, t)

    def denoise(
        self, z: jax.Array | np.ndarray, t: float | jax.Array | np.ndarray, labels=None,
        prompts: Prompts | None = None, guidance: float = 0.0,
    ) -> jax.Array:
        """x̂(z_t, t): the network's estimate of the clean image (float32, the shape of `z`,
        [-1, 1] scale) at diffusion time t in [0, 1] (a scalar or one per example), guided with
        weight `guidance` (x = x_cond + w (x_cond - x_uncond)). `labels` default to the null
        label (unconditional); a text run needs `prompts`."""
        z = jnp.asarray(z, jnp.float32)
        n = z.shape[0]
        if labels is None and not self.text:
            labels = np.full(n, config_lib.null_label(self.config), np.int32)
        labels, text = self._condition(n, labels, prompts)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,))
        cond = labels if text is None else {"label": labels, **text}
        return self._denoise(self.params, z, t, cond, float(guidance))

    # -- sampling ----------------------------------------------------------------------------
    def own_sampler(self) -> SamplerSetting:
        """The run's own sampler: a student's S-step DDIM; a teacher's training.sample_method
        at training.sample_steps, guided with its eval.guidance_weight."""
        own = run_setup.own_sampler(self.config)
        weight = 0.0 if self.config.objective == "mcm" else float(self.config.eval.guidance_weight)
        return SamplerSetting(own.method, own.steps, weight)

    def sample(
        self, num: int | None = None, *, labels: Sequence[int] | None = None,
        prompts: Prompts | None = None, steps: int | None = None, method: str | None = None,
        guidance: float | None = None, seed: int = 0,
    ) -> np.ndarray:
        """Samples as uint8 (n, H, W, C). Give one of `num` (labels cycle through the classes),
        `labels` (one per sample) or `prompts` (text runs: strings or their embeddings).
        `steps`, `method` ("ddim" | "addim") and `guidance` default to `own_sampler()`'s.
        Sample i starts from the noise normal(fold_in(PRNGKey(seed), i))."""
        given = [name for name, v in (("num", num), ("labels", labels), ("prompts", prompts))
                 if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"sample: give exactly one of num, labels, prompts (got {given or 'none'})"
            )
        if prompts is not None:
            prompts = self.embed(prompts)
        n = num if num is not None else len(labels if labels is not None else prompts["text"])
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"sample: need at least one sample, got {n!r}")
        labels, text = self._condition(n, labels, prompts)
        own = self.own_sampler()
        setting = SamplerSetting(
            own.method if method is None else method, own.steps if steps is None else steps,
            own.guidance_weight if guidance is None else float(guidance),
        )
        if setting.method not in samplers.METHODS:
            raise ValueError(f"method: {setting.method!r} is not one of {samplers.METHODS}")
        if not (isinstance(setting.steps, int) and setting.steps >= 1):
            raise ValueError(f"steps: need an integer >= 1, got {setting.steps!r}")
        if setting.guidance_weight < 0:
            raise ValueError(f"guidance: must be >= 0, got {setting.guidance_weight}")
        devices = self.setup.mesh.size
        batch = math.ceil(n / devices) * devices  # padded to split over every device
        key = (setting, batch, seed)
        if key not in self._samplers:
            self._samplers[key] = self.setup.batch_sampler(
                setting, seed=seed, batch_size=batch, labels=True
            )
        pad = lambda a: np.concatenate([a, np.zeros((batch - n, *a.shape[1:]), a.dtype)])
        prompts_in = None if text is None else {k: pad(v) for k, v in text.items()}
        x = self._samplers[key](self.params, 0, prompts_in, pad(labels))
        return images.to_uint8(np.asarray(x)[:n])


def load(workdir: str, step: int | None = None, ema_index: int = 0) -> Run:
    """The run in `workdir` (a teacher's or a student's; local or gs://) at checkpoint `step`
    (None: the latest) with EMA parameter set `ema_index`, sharded over this process's devices.
    A workdir without a run or a checkpoint, a step that does not exist or an ema_index out of
    range is a FileNotFoundError or ValueError with one message saying which."""
    workdir = paths.resolve(str(workdir))  # orbax reads absolute paths; gs:// stays as given
    try:
        config = run_setup.saved_config(workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"mcm_jax.load: {e}") from None
    num_ema = len(config.ema_decays)
    if not (isinstance(ema_index, int) and 0 <= ema_index < num_ema):
        raise ValueError(
            f"mcm_jax.load: ema_index={ema_index!r} but the run in {workdir} has {num_ema} EMA "
            f"parameter set(s) (ema_decays={tuple(config.ema_decays)}): use 0..{num_ema - 1}"
        )
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        try:
            step = checkpointing.resolve_step(ckpt, -1 if step is None else step, workdir)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"mcm_jax.load: {e}") from None
        setup = run_setup.RunSetup.create(_local_layout(config), jax.local_devices())
        params = ckpt.restore_ema_params(step, setup.abstract_ema_params())[ema_index]
    finally:
        ckpt.close()
    return Run(workdir, config, setup, params, step, ema_index)


def _local_layout(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` laid out on this process's devices: its fsdp where it divides them
    (else 1), data filling the rest, a training batch they divide (checked, never used)."""
    config = ml_collections.ConfigDict(config.to_dict())
    devices = jax.local_device_count()
    fsdp = config.mesh.fsdp if devices % config.mesh.fsdp == 0 else 1
    config.mesh.update(data=-1, fsdp=fsdp)
    config.training.batch_size = math.ceil(config.training.batch_size / devices) * devices
    return config
