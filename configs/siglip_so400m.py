"""SigLIP So400m/14 (the shape-optimised 400M-parameter ViT, 224 px, 16 text tokens) with the
sigmoid loss and its fused ring: the SigLIP paper's So400m at a global batch of 32k (Adam b2
0.95, lr 1e-3, weight decay 1e-4, cosine), for 45B examples as its released checkpoint saw
(open_clip lists it at 82.0% ImageNet zero-shot top-1). 877M parameters with both towers:
parameters and Adam moments are FSDP-split over 8 chips (a 16 GiB v5e chip cannot hold them
whole), the towers fully rematerialised. As siglip_b16.py: LAION-style tar shards instead of
WebLI, and model.tokenizer_dir must hold SigLIP's tokenizer.model.

Expected cost: 3.9e22 FLOPs (28.6 PFLOP a step x 1,373,291 steps; FLOPs: matrix multiplies executed,
rematerialisation included, as `jaxvlm plan` counts them in the traced train step): 55,300 v5e
chip-hours at peak bf16, so about 18 days on a v5e-256 at 50% MFU.

    jaxvlm train --config configs/siglip_so400m.py --workdir /mnt/runs/so400m \\
        --config.model.tokenizer_dir=/models/siglip-so400m --config.data.source='tar:/data/shards/{00000..99999}.tar'
"""

from jaxvlm.train.config import base_config

IMAGENET_ZEROSHOT = {"task": "zeroshot", "dataset": "tfds:imagenet2012", "split": "validation", "batch_size": 1024}


def get_config():
    c = base_config()
    c.model.name = "ViT-SO400M-14-SigLIP"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.tokenizer_dir = "/models/siglip-so400m"
    c.global_batch_size = 32768
    c.total_steps = 1_373_291  # 45B examples
    c.log_every = 100
    c.eval_every = 20_000
    c.eval_specs = (IMAGENET_ZEROSHOT,)
    c.loss.implementation = "auto"  # the fused ring on TPU

    c.optimizer.lr = 1e-3
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 5000

    c.mesh.fsdp = 8

    c.checkpoint.every = 2000
    c.checkpoint.keep_every = 100_000

    c.data.source = "tar:/data/shards/{00000..99999}.tar"
    c.data.augment = "eval"  # the whole image squashed to 224 x 224, as big_vision trains SigLIP
    return c
