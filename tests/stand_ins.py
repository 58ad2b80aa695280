"""Tiny random checkpoints in the sources' own formats, standing in for real pretrained weights in
the notebook and documentation tests (nothing here may download them)."""

from pathlib import Path

# HF CLIPModel towers at tiny-clip's sizes (32 px images, 8 px patches); CLIP's vocabulary, so the
# converter uses the bundled BPE tokenizer
HF_CLIP_TOWER = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)


def hf_clip_dir(directory: Path, seed: int = 0) -> Path:
    """A transformers CLIPModel directory (config.json + model.safetensors), as `hf download` gives."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=HF_CLIP_TOWER, vision_config={**HF_CLIP_TOWER, "image_size": 32, "patch_size": 8}, projection_dim=32
    )
    transformers.CLIPModel(config).save_pretrained(directory)
    return directory


def open_clip_coca_state(seed: int = 0) -> dict:
    """An open_clip CoCa state dict with tiny-coca's shapes."""
    import open_clip
    import torch

    from tests.reference_models import TINY_COCA, initialise_decoder_head

    torch.manual_seed(seed)
    model = initialise_decoder_head(open_clip.CoCa(**TINY_COCA).eval())
    return {k: v.contiguous() for k, v in model.state_dict().items()}
