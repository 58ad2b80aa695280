"""CLIP ViT-B/32 from scratch on LAION-style WebDataset tar shards (what img2dataset writes:
key.jpg + key.txt): open_clip's LAION-400M ViT-B/32 run, 32 epochs of 400M pairs = 12.8B
samples at a global batch of 32768 (open_clip reports 62.9% ImageNet zero-shot top-1; OpenAI's
ViT-B/32: 63.2%). AdamW (b2 0.98, eps 1e-6), lr 5e-4, weight decay 0.2 on weight matrices,
2000 warmup steps then cosine; bf16 compute, float32 parameters.

Expected cost: 5.7e20 FLOPs (1.45 PFLOP a step x 390,625 steps; FLOPs: matrix multiplies executed,
rematerialisation included, as `jaxvlm plan` counts them in the traced train step): 343 v5p
chip-hours at peak bf16, so about 11 hours on a v5p-128 (64 chips) at 50% MFU.

    jaxvlm train --config configs/clip_b32.py --workdir /mnt/runs/clip_b32 \\
        --config.data.source='tar:/data/laion400m/{00000..41407}.tar' --config.data.data_dir=/data/tfds
"""

from jaxvlm.train.config import base_config

IMAGENET_ZEROSHOT = {"task": "zeroshot", "dataset": "tfds:imagenet2012", "split": "validation", "batch_size": 1024}


def get_config():
    c = base_config()
    c.model.name = "ViT-B-32"
    c.model.dtype = "bfloat16"
    c.global_batch_size = 32768
    c.total_steps = 390_625  # 12.8B samples
    c.log_every = 100
    c.eval_every = 10_000
    c.eval_specs = (IMAGENET_ZEROSHOT,)

    c.optimizer.lr = 5e-4
    c.optimizer.weight_decay = 0.2
    c.optimizer.warmup_steps = 2000

    c.checkpoint.every = 2000
    c.checkpoint.keep_every = 50_000

    c.data.source = "tar:/data/laion400m/{00000..41407}.tar"
    return c
