"""Writes what `make demo` converts and embeds: an open_clip ViT-B-32 state dict (random
weights, since nothing can be downloaded here) and three of scikit-image's sample photos."""

import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tests.conftest  # noqa: E402,F401  (makes torchvision importable next to CPU torch)
import open_clip  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
model = open_clip.create_model("ViT-B-32", pretrained=None)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip.safetensors")
for name in ("astronaut", "chelsea", "coffee"):
    Image.fromarray(getattr(data, name)()).save(out / f"{name}.png")
print(f"wrote {out}/open_clip.safetensors and three photos")
