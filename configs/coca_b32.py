"""CoCa ViT-B/32 (open_clip's coca_ViT-B-32: attentional pooler, multimodal decoder) from
scratch on LAION-style tar shards with the contrastive (softmax) loss plus the captioning loss,
weights 1 and 2 as open_clip's CoCa defaults: open_clip's laion2b_s13b_b90k checkpoint, 13B
samples at a global batch of about 90k (here 90112 = 88 x 1024, so that it splits over any
power-of-2 slice up to 1024 chips). AdamW lr 5e-4, weight decay 0.2, 2000 warmup steps, cosine.

Expected cost: 1.3e21 FLOPs (9.04 PFLOP a step x 144,265 steps; FLOPs: matrix multiplies executed,
rematerialisation included, as `jaxvlm plan` counts them in the traced train step): 790 v5p
chip-hours at peak bf16, so about 12 hours on a v5p-256 (128 chips) at 50% MFU.

    jaxvlm train --config configs/coca_b32.py --workdir /mnt/runs/coca_b32 \\
        --config.data.source='tar:/data/laion2b/{000000..231349}.tar' --config.data.data_dir=/data/tfds
"""

from jaxvlm.train.config import base_config

IMAGENET_ZEROSHOT = {"task": "zeroshot", "dataset": "tfds:imagenet2012", "split": "validation", "batch_size": 1024}


def get_config():
    c = base_config()
    c.model.name = "coca_ViT-B-32"
    c.model.dtype = "bfloat16"
    c.model.remat = "dots"
    c.global_batch_size = 90112
    c.total_steps = 144_265  # 13B samples
    c.log_every = 100
    c.eval_every = 10_000
    c.eval_specs = (IMAGENET_ZEROSHOT,)
    c.loss.contrastive_weight = 1.0
    c.loss.caption_weight = 2.0

    c.optimizer.lr = 5e-4
    c.optimizer.weight_decay = 0.2
    c.optimizer.warmup_steps = 2000

    c.checkpoint.every = 2000
    c.checkpoint.keep_every = 50_000

    c.data.source = "tar:/data/laion2b/{000000..231349}.tar"
    return c
