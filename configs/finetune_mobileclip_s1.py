"""Fine-tuning MobileCLIP-S1 (Apple's DataCompDR-trained FastViT MCi1 + 12-layer text tower, 85M
parameters) on CIFAR-100 with its own contrastive loss (FLYP), sized for one Colab accelerator: the TPU
v5e-1 runtime (16 GB of HBM) or a 15 GB T4 / 24 GB L4 GPU. Convert the published weights once:

    jaxvlm convert hf-hub:apple/MobileCLIP-S1-OpenCLIP models/mobileclip-s1

The model directory holds the image tower in its multi-branch training form (MobileOne branches, RepMixers,
RepCPE, each with BatchNorm); it fine-tunes in that form, with BatchNorm's running statistics frozen
(model.batch_norm "auto" keeps a converted model's statistics, so small batches do not disturb them).
`jaxvlm.load(...).reparameterize()` folds the branches for inference afterwards. Optimizer as
configs/finetune.py (WiSE-FT's: AdamW lr 3e-5 here for a smaller batch, weight decay 0.1, cosine after 100
warmup steps); 10 epochs at batch 256: 1953 steps. Zero-shot accuracy on the test split every 500 steps.

    jaxvlm train --config configs/finetune_mobileclip_s1.py --workdir out/mobileclip-s1-cifar100 \\
        --config.model.init_from=models/mobileclip-s1 --config.data.data_dir=tfds
    jaxvlm wise-ft models/mobileclip-s1 out/mobileclip-s1-cifar100/model --alpha 0.5 models/mobileclip-s1-wise-ft

On Colab, colab/finetune.ipynb runs the same fine-tuning with live curves (its MODEL cell names MobileCLIP-S1).

Expected cost: 3.0e16 FLOPs (15.1 TFLOP a step x 1953 steps; FLOPs: matrix multiplies and convolutions
executed, the full rematerialisation included, as `jaxvlm plan` counts them in the traced train step): 77 ms
a step at the v5e chip's peak bf16, 2.5 minutes, so about 10 minutes at 25% MFU plus the evaluations.
`jaxvlm plan --topology v5e-1` (the Colab TPU runtime) at batch 256: 10.5 of 16 GiB per chip with
model.remat "full" (without it the step's temporaries alone need 68 GiB).
"""

from jaxvlm.train.config import base_config


def get_config():
    c = base_config()
    c.model.init_from = "models/mobileclip-s1"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.global_batch_size = 256
    c.total_steps = 1953  # 10 epochs of 50,000 images
    c.log_every = 20
    c.eval_every = 500
    c.eval_specs = ({"task": "zeroshot", "dataset": "tfds:cifar100", "split": "test", "batch_size": 500},)

    c.optimizer.lr = 3e-5
    c.optimizer.weight_decay = 0.1
    c.optimizer.warmup_steps = 100

    c.checkpoint.every = 500

    c.data.source = "tfds:cifar100"
    c.data.label_key = "label"
    c.data.text_templates = ("a photo of a {}.",)
    c.data.crop_scale = (0.9, 1.0)
    return c
