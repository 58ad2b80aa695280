"""open_clip -> jaxvlm parity: random-initialised (and perturbed) open_clip models, converted
through the CLI, loaded with jaxvlm.load, compared in fp32."""

import jax
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import jaxvlm
from jaxvlm.cli import main
from tests.reference_models import initialise_decoder_head
from tests.tolerances import assert_close_to_scale

open_clip = pytest.importorskip("open_clip")

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


@pytest.fixture(
    scope="module",
    params=[  # full-size models: one in `make test`, the others in `make test-slow`
        ("ViT-B-32", ".safetensors"),
        pytest.param(("ViT-B-32-quickgelu", ".bin"), marks=pytest.mark.slow),
        pytest.param(("ViT-B-16-SigLIP", ".safetensors"), marks=pytest.mark.slow),
    ],
    ids=lambda p: p[0],
)
def converted(request, tmp_path_factory, spm_model_file):
    name, suffix = request.param
    reference = perturbed_open_clip_model(name)
    directory = tmp_path_factory.mktemp(name)
    weights = directory / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, weights)
    else:
        torch.save(state, weights)
    args = ["convert", "--from", "open_clip", str(weights), str(directory / "model"), "--model", name]
    if "SigLIP" in name:
        args += ["--tokenizer", str(spm_model_file)]
    assert main(args) == 0
    return name, reference, load_on_one_device(directory / "model")


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.latest
def test_embeddings_and_logits_match(converted):
    name, reference, model = converted
    pixels = model.preprocess(photos())
    ids = model.tokenize(CAPTIONS)
    zi, zt = model.encode_image(pixels), model.encode_text(ids)
    logits = model.logits(zi, zt)
    with torch.no_grad():
        ref_zi = reference.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2), normalize=True)
        ref_zt = reference.encode_text(torch.from_numpy(ids).long(), normalize=True)
        ref_logits = reference.logit_scale.exp() * ref_zi @ ref_zt.T
        scale = float(reference.logit_scale.detach().exp())
        if reference.logit_bias is not None:
            ref_logits = ref_logits + reference.logit_bias
            scale += abs(float(reference.logit_bias.detach()))
    errors = {"image": max_abs(zi, ref_zi), "text": max_abs(zt, ref_zt)}
    print(f"\nopen_clip {name} max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert all(e <= TOLERANCE for e in errors.values()), errors
    assert_close_to_scale(
        logits, ref_logits.numpy(), rtol_of_scale=TOLERANCE, scale=scale, what=f"open_clip {name} logits"
    )


def test_other_architecture_is_refused(converted, tmp_path, capsys):
    name, reference, _ = converted
    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, weights)
    other = "ViT-B-16" if name != "ViT-B-16" else "ViT-B-32"
    assert main(["convert", "--from", "open_clip", str(weights), str(tmp_path / "out"), "--model", other]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err, err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def converted_coca(tmp_path_factory):
    from safetensors.torch import save_file

    reference = perturbed_open_clip_model("coca_ViT-B-32")
    directory = tmp_path_factory.mktemp("coca")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, directory / "w.safetensors")
    assert (
        main(
            [
                "convert",
                "--from",
                "open_clip",
                str(directory / "w.safetensors"),
                str(directory / "model"),
                "--model",
                "coca_ViT-B-32",
            ]
        )
        == 0
    )
    return reference, load_on_one_device(directory / "model")


def test_coca_embeddings_and_decoder_logits_match(converted_coca):
    import jax

    reference, model = converted_coca
    pixels = model.preprocess(photos())
    ids = model.tokenize(CAPTIONS[:3])
    zi, zt = model.encode_image(pixels), model.encode_text(ids)
    logits = model.logits(zi, zt)
    caption_logits = jax.jit(model.module.apply)({"params": model.params}, pixels, ids).caption_logits
    with torch.no_grad():
        out = reference(torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(ids).long(), output_labels=False)
    errors = {"image": max_abs(zi, out["image_features"]), "text": max_abs(zt, out["text_features"])}
    print("\nopen_clip coca_ViT-B-32 max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert ids.shape[1] == 76 and np.all(ids[:, -1] == 0)  # padded texts: the shifted mask matters
    assert all(e <= TOLERANCE for e in errors.values()), errors
    ref_logits = (out["logit_scale"] * out["image_features"] @ out["text_features"].T).numpy()
    assert_close_to_scale(
        logits,
        ref_logits,
        rtol_of_scale=TOLERANCE,
        scale=float(out["logit_scale"]),
        what="open_clip coca_ViT-B-32 logits",
    )
    assert_close_to_scale(
        caption_logits, out["logits"].numpy(), rtol_of_scale=TOLERANCE, what="open_clip coca_ViT-B-32 decoder logits"
    )


@pytest.mark.parametrize("name", ["coca_ViT-B-32", "coca_ViT-L-14", "coca_base"])
def test_coca_converters_account_for_every_key(name):
    """At full size without real weights: open_clip's tensors on the meta device, converted from
    zero-stride arrays of their shapes, so every key and shape is checked in seconds."""
    from jaxvlm.convert.open_clip import convert_state_dict

    with torch.device("meta"):
        reference = open_clip.create_model(name, pretrained=None, device="meta")
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in reference.state_dict().items()}
    params = convert_state_dict(state, name)
    leaves = [np.shape(x) for x in jax_leaves(params)]
    assert sum(int(np.prod(s)) for s in leaves) == sum(v.numel() for v in reference.state_dict().values())
    del state["text.cls_emb"]
    with pytest.raises(jaxvlm.InputError, match="text.cls_emb"):
        convert_state_dict(state, name)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)
