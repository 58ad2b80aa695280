"""Demo: a tiny CLIP (tiny-clip: ViT 32 px / patch 8, width 64, 2 layers; text width 64, 2 layers)
trained from scratch on jaxvlm_digits, scikit-learn's handwritten digits with generated captions
(`make demo` builds it). Evaluates zero-shot top-1 accuracy on the held-out test split with the
dataset's prompt set. Cost: a few minutes on a laptop CPU; target >= 90% zero-shot top-1.

    jaxvlm train --config configs/demo.py --workdir out/demo --config.data.data_dir=out/tfds
"""

from jaxvlm.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = "tiny-clip"
    c.total_steps = 600
    c.global_batch_size = 128
    c.log_every = 10
    c.eval_every = 200
    c.eval_specs = ({"task": "zeroshot", "dataset": "tfds:jaxvlm_digits", "split": "test", "batch_size": 128},)

    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 0.05

    c.checkpoint.every = 200
    c.checkpoint.keep_last = 2

    c.data.source = "tfds:jaxvlm_digits"
    c.data.worker_count = 0  # decode in the training process: the images are 32 px PNGs
    c.data.crop_scale = (0.8, 1.0)
    c.data.flip = False  # a mirrored digit is another shape
    return c
