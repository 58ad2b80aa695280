"""SigLIP ViT-B/16 (224 px, 64 text tokens) from scratch with the sigmoid loss, whose fused
Pallas ring (`jaxvlm.kernels.sigmoid_loss`) passes text chunks around the devices so that no
chip holds the global batch's logits: the SigLIP paper's B/16 setting (Zhai et al., 2023): a
global batch of 32k, Adam with b2 0.95 (for stability at large batches), lr 1e-3, decoupled
weight decay 1e-4, cosine after a linear warmup, logit scale / bias initialised to ln 10 / -10;
9B examples seen (the paper's standard budget; its released B/16 saw 40B). The paper trains on
WebLI (not public): point data.source at LAION-style tar shards instead. SigLIP's SentencePiece
tokenizer is not bundled: model.tokenizer_dir must name the directory holding its
tokenizer.model (e.g. a `jaxvlm convert --from big_vision` model directory).

Expected cost: 1.6e21 FLOPs (5.83 PFLOP a step x 274,658 steps; FLOPs: matrix multiplies executed,
rematerialisation included, as `jaxvlm plan` counts them in the traced train step): 2259 v5e
chip-hours at peak bf16, so about 18 hours on a v5e-256 at 50% MFU (`jaxvlm plan` below: 116 ms a
step at peak, 6.4 of 16 GiB per chip).

    jaxvlm plan --config configs/siglip_b16.py --topology v5e-256
    jaxvlm train --config configs/siglip_b16.py --workdir /mnt/runs/siglip_b16 \\
        --config.model.tokenizer_dir=/models/siglip-b16 --config.data.source='tar:/data/shards/{00000..99999}.tar'
"""

from jaxvlm.train.config import base_config

IMAGENET_ZEROSHOT = {"task": "zeroshot", "dataset": "tfds:imagenet2012", "split": "validation", "batch_size": 1024}


def get_config():
    c = base_config()
    c.model.name = "ViT-B-16-SigLIP"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.tokenizer_dir = "/models/siglip-b16"
    c.global_batch_size = 32768
    c.total_steps = 274_658  # 9B examples
    c.log_every = 100
    c.eval_every = 10_000
    c.eval_specs = (IMAGENET_ZEROSHOT,)
    c.loss.implementation = "auto"  # the fused ring on TPU

    c.optimizer.lr = 1e-3
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 5000

    c.checkpoint.every = 2000
    c.checkpoint.keep_every = 50_000

    c.data.source = "tar:/data/shards/{00000..99999}.tar"
    c.data.augment = "eval"  # big_vision's SigLIP input: the whole image squashed to 224 x 224, no crop or flip
    return c
