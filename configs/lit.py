"""LiT, locked-image tuning (Zhai et al., 2022): a pretrained image tower, frozen, and a text
tower trained from scratch to match it. model.init_from names a converted checkpoint whose
architecture, preprocessing and tokenizer the run takes (default: a SigLIP B/16 converted with
`jaxvlm convert --from big_vision webli_en_b16_224.npz models/siglip-b16 --tokenizer
c4_en.model`); init_params="img/.*" takes only its image tower (the text tower, t and b start
fresh) and optimizer.freeze="img/.*" keeps it bitwise unchanged, with no optimizer state. With a
SigLIP tower the loss is the sigmoid one: the SigLIP paper's SigLiT setting, trained on four TPU
v4 chips (a v4-8). Global batch 16k, gradient caching over 4 micro-batches, 65k steps (1B
examples), Adam b2 0.95, lr 1e-3, weight decay 1e-4. The frozen tower's backward pass is dead
code that XLA removes, so a step costs the image forward plus the text tower's training.

Expected cost: 9.4e19 FLOPs (1.44 PFLOP a step x 65,000 steps; FLOPs: matrix multiplies executed,
rematerialisation included, as `jaxvlm plan` counts them in the traced train step): 95 v4 chip-hours
at peak bf16, so about 2 days on a v4-8 (4 chips) at 50% MFU.

    jaxvlm train --config configs/lit.py --workdir /mnt/runs/lit --config.model.init_from=models/siglip-b16 \\
        --config.data.source='tar:/data/cc12m/{00000..01242}.tar' --config.data.data_dir=/data/tfds
"""

from jaxvlm.train.config import base_config

IMAGENET_ZEROSHOT = {"task": "zeroshot", "dataset": "tfds:imagenet2012", "split": "validation", "batch_size": 1024}


def get_config():
    c = base_config()
    c.model.init_from = "models/siglip-b16"
    c.model.init_params = "img/.*"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.global_batch_size = 16384
    c.microbatches = 4
    c.total_steps = 65_000
    c.log_every = 100
    c.eval_every = 5000
    c.eval_specs = (IMAGENET_ZEROSHOT,)

    c.optimizer.freeze = "img/.*"
    c.optimizer.lr = 1e-3
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 5000

    c.checkpoint.every = 2000

    c.data.source = "tar:/data/cc12m/{00000..01242}.tar"
    c.data.augment = "eval"  # the frozen tower's own preprocessing
    return c
