"""Fine-tuning a converted CLIP on a TFDS classification dataset, then WiSE-FT. The model
(model.init_from) is e.g. OpenAI's ViT-B/16, converted with `jaxvlm convert --from open_clip
ViT-B-16.pt models/vit-b-16 --model ViT-B-16-quickgelu`; the data is CIFAR-100, whose labels
become captions through data.text_templates ("a photo of a {}.", filled with the class name),
so the model is fine-tuned with its own contrastive loss (FLYP: "finetune like you pretrain",
Goyal et al., 2023). The optimizer is WiSE-FT's (Wortsman et al., 2022): AdamW lr 3e-5, weight
decay 0.1, batch 512, 10 epochs (977 steps on CIFAR-100's 50k images), cosine after a warmup
(here 100 steps). Zero-shot accuracy on the test split, with CIFAR-100's prompt set, is logged
every 200 steps and at the end. WiSE-FT then mixes the weights of the zero-shot and the
fine-tuned model (alpha 0.5 is the paper's default), keeping much of the zero-shot model's
robustness to distribution shift:

    jaxvlm train --config configs/finetune.py --workdir out/finetune --config.model.init_from=models/vit-b-16 \\
        --config.data.data_dir=/data/tfds
    jaxvlm wise-ft models/vit-b-16 out/finetune/model --alpha 0.5 models/vit-b-16-wise-ft
    jaxvlm eval models/vit-b-16-wise-ft --task zeroshot --dataset tfds:cifar100 --data-dir /data/tfds

Expected cost: 6.5e16 FLOPs (66 TFLOP a step x 977 steps; FLOPs: matrix multiplies executed,
rematerialisation included, as `jaxvlm plan` counts them in the traced train step): 0.09 v5e
chip-hours at peak bf16, a few minutes on a v5e-8 plus the evaluations.
"""

from jaxvlm.train.config import base_config


def get_config():
    c = base_config()
    c.model.init_from = "models/vit-b-16"
    c.model.dtype = "bfloat16"
    c.global_batch_size = 512
    c.total_steps = 977  # 10 epochs of 50,000 images
    c.log_every = 20
    c.eval_every = 200
    c.eval_specs = ({"task": "zeroshot", "dataset": "tfds:cifar100", "split": "test", "batch_size": 500},)

    c.optimizer.lr = 3e-5
    c.optimizer.weight_decay = 0.1
    c.optimizer.warmup_steps = 100

    c.checkpoint.every = 200

    c.data.source = "tfds:cifar100"
    c.data.label_key = "label"
    c.data.text_templates = ("a photo of a {}.",)
    c.data.crop_scale = (0.9, 1.0)
    return c
