"""SigLIP 2 So400m/16 NaFlex (ViT-SO400M-16-SigLIP2-NaFlex: width 1152, depth 27, 16 heads, MLP 4304,
16 x 16 learned positions; SigLIP 2's text tower: Gemma's 256k vocabulary, 64 tokens, the same widths,
tanh GELU) with the sigmoid loss and its fused ring: each image resized at its own aspect ratio to fit
a budget of 256 patches of 16 px (what big_vision's NaFlex checkpoints report their results at), sent
as uint8 patches with their mask and grid. SigLIP 2's optimisation as its paper states it (Tschannen
et al., 2025): global batch 32k, Adam, lr 1e-3, decoupled weight decay 1e-4, gradient clipping at
norm 1, cosine after a 20k-step warmup, 40B examples (Adam's b2 0.95 as in the SigLIP recipes here).
1.14B parameters with both towers; parameters and Adam moments are FSDP-split over 8 chips, the
towers fully rematerialised.

What differs from the paper: SigLIP 2 trains at fixed resolution and switches to NaFlex for the last
10% of its examples, drawing each batch's sequence length from {128, 256, 576, 784, 1024}; this recipe
trains NaFlex throughout, at the architecture's one budget of 256 patches for every batch (one
compiled step; docs/data.md says why examples are padded to it, not packed). SigLIP 2's decoder
(LocCa) and self-distillation / masked-prediction losses are not part of jaxvlm: the sigmoid loss alone.
WebLI is not public: point data.source at LAION-style tar shards. Gemma's tokenizer is not bundled:
model.tokenizer_dir must hold its tokenizer.json (e.g. a `jaxvlm convert` of
hf-hub:google/siglip2-so400m-patch16-naflex).

Expected cost: 4.1e22 FLOPs (33.4 PFLOP a step x 1,220,703 steps; FLOPs: matrix multiplies executed,
rematerialisation included, as `jaxvlm plan` counts them in the traced train step): 24,700 v5p
chip-hours at peak bf16, so about 32 days on a v5p-128 at 50% MFU, or 4 days on a v6e-256 (`jaxvlm
plan`, README: 1.14 s a step at peak and 29.6 of 95 GiB per chip on a v5p-128; 142 ms and 10.3 of
32 GiB on a v6e-256).

    jaxvlm plan --config configs/siglip2_so400m16_naflex.py --topology v5p-128
    jaxvlm train --config configs/siglip2_so400m16_naflex.py --workdir /mnt/runs/siglip2_naflex \\
        --config.model.tokenizer_dir=/models/siglip2-naflex --config.data.source='tar:/data/shards/{00000..99999}.tar'
"""

from jaxvlm.train.config import base_config

IMAGENET_ZEROSHOT = {"task": "zeroshot", "dataset": "tfds:imagenet2012", "split": "validation", "batch_size": 1024}


def get_config():
    c = base_config()
    c.model.name = "ViT-SO400M-16-SigLIP2-NaFlex"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.tokenizer_dir = "/models/siglip2-naflex"
    c.global_batch_size = 32768
    c.total_steps = 1_220_703  # 40B examples
    c.log_every = 100
    c.eval_every = 20_000
    c.eval_specs = (IMAGENET_ZEROSHOT,)
    c.loss.implementation = "auto"  # the fused ring on TPU

    c.optimizer.lr = 1e-3
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 20_000

    c.mesh.fsdp = 8

    c.checkpoint.every = 2000
    c.checkpoint.keep_every = 100_000

    c.data.source = "tar:/data/shards/{00000..99999}.tar"
    c.data.augment = "eval"  # the whole image at its own aspect ratio within the patch budget, no crop or flip
    return c
