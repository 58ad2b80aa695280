"""Tiny open_clip ModifiedResNet CLIPs (OpenAI's RN50 family) for the converter tests: perturbed weights and
perturbed BatchNorm statistics, saved as an open_clip hub repo or a state dict."""

import copy

import torch

from tests.convert.open_clip_models import CLIP_PREPROCESS, NoTokenizerFiles, perturbed, save_repo

# stages of one block, 16 channels in the stem (512 in the last stage: 8 attention-pool heads of 64), 64 px:
# a 2 x 2 final feature map
TINY_RESNET_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


def perturbed_batch_norms(model):
    """``model`` with every BatchNorm's statistics and affine moved far from their initial values (means
    N(0, 0.5), variances times e^N(0, 0.5), scales 1 + N(0, 0.2)), so that statistics left unused or swapped
    show; in eval mode."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.mul_(torch.exp(0.5 * torch.randn_like(module.running_var)))
                module.weight.copy_(1 + 0.2 * torch.randn_like(module.weight))
                module.num_batches_tracked.fill_(1000)
    return model.eval()


def tiny_resnet_model(seed: int = 0):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**copy.deepcopy(TINY_RESNET_CFG))
    return perturbed_batch_norms(perturbed(model))


def tiny_resnet_repo(directory, safe_serialization=True):
    """tiny_resnet_model saved at ``directory`` by open_clip's save_for_hf (open_clip runs its CLIP BPE)."""
    return save_repo(
        directory, tiny_resnet_model(), NoTokenizerFiles(), TINY_RESNET_CFG, CLIP_PREPROCESS, safe_serialization
    )
