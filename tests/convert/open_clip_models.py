"""What the open_clip converter tests share: captions, the parity tolerance, perturbed open_clip
reference models, and loading a converted model on one device."""

import jax
import numpy as np
import torch
from PIL import Image
from skimage import data

import jaxvlm
from tests.reference_models import initialise_decoder_head

CAPTIONS = [
    "a photo of a cat",
    "an astronaut in a white suit",
    "a cup of coffee",
    "",
    "a rocket on the launch pad " * 20,
]
# max abs error of the unit-norm embeddings; the logits (exp(t) * cosine + b) carry the same relative accuracy,
# so theirs is TOLERANCE times exp(t) + |b|, the largest a logit can be (an absolute 1e-5 would fail a trained
# CLIP's exp(t) = 100 on rounding alone); the decoder's vocabulary logits TOLERANCE times their largest
TOLERANCE = 1e-5


def perturbed_open_clip_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    import open_clip

    model = open_clip.create_model(name, pretrained=None).eval()
    if hasattr(model, "text_decoder"):
        initialise_decoder_head(model)
    with torch.no_grad():  # every tensor moves off its initial value, so swapped or missed ones show
        for key, value in model.state_dict().items():
            if key != "logit_scale" and value.is_floating_point():
                value.add_(0.02 * torch.randn_like(value))
    return model


def load_on_one_device(directory):
    """Replicated over the suite's 8 simulated CPU devices, a full-size model would be held 8 times
    (a peak of 16 GB for these tests)."""
    return jaxvlm.load(directory, devices=jax.local_devices()[:1])


def photos():
    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
