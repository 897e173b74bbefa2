"""Text-to-image diffusion teacher at 512 px (paper §5.2, appendix A.1, Table 6).

    python -m mcm_jax.data.embed_text --source='tar:gs://BUCKET/laion/*.tar' \
        --encoder_dir=/path/to/t5_1.1_xxl --out=gs://BUCKET/captions_t5xxl --split=train
    python -m mcm_jax.main --config=configs/t2i_512_diffusion.py \
        --config.data.data_dir=gs://BUCKET/captions_t5xxl --workdir=gs://BUCKET/mcm/t2i_512

Argument: only `runlocal` (every config file takes it: a laptop smoke test, README.md).
The network is `t2i512` (mcm_jax/models/configs.py): ResNet levels of 128, 256 and
1024 channels, a 2048-wide transformer level at 64 px and 16 middle blocks of 4096 at 32 px,
dropout 0.1 in the middle; every transformer block cross-attends to the prompt's T5 v1.1 XXL
token embeddings (4096 wide, 128 tokens: `data.text_width`, `data.text_length`, which the data
set's embeddings must match). The schedule interpolates from noise resolution 32 to 512 and the
loss is simple diffusion's multiscale loss down to 32 px (four 2x2 poolings). Prompts are
dropped (the empty prompt) for 10% of the examples so that the teacher can be guided.

The paper gives no optimizer, steps or prompt dropout for this model: ours are the ImageNet
teacher's (Adam, lr 1e-4 after 1000 warm-up steps, gradient clipping 1, EMA 0.9999, batch 2048,
500k steps), with parameters and optimizer state sharded over 8 devices (`mesh.fsdp`; 5.6B
parameters). `--mode=eval` samples 30k prompts (`eval.prompts_dir` and `eval.prompts_split`: COCO
`restval`, docs/text_to_image.md) with 256 DDIM steps and guidance 3, the paper's teacher
baseline; `--config.eval.num_samples=5000` gives the 5k metric.
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.NO_ARGS


def get_config(arg: str = ""):
    return presets.t2i_diffusion(arg)
