"""open_clip -> jaxvlm parity: random-initialised (and perturbed) open_clip models, converted
through the CLI, loaded with jaxvlm.load, compared in fp32."""

import jax
import numpy as np
import pytest
import torch

import jaxvlm
from jaxvlm.cli import main
from tests.convert.open_clip_models import (
    CAPTIONS,
    TOLERANCE,
    load_on_one_device,
    max_abs,
    perturbed_open_clip_model,
    photos,
)
from tests.tolerances import assert_close_to_scale

open_clip = pytest.importorskip("open_clip")


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


@pytest.mark.slow  # full-size coca_ViT-B-32; make test runs tiny-coca against open_clip (tests/test_generation.py)
def test_coca_embeddings_and_decoder_logits_match(converted_coca):

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


@pytest.mark.parametrize(
    "name, dropped",
    [
        ("coca_ViT-B-32", "text.cls_emb"),
        ("coca_ViT-L-14", "text.cls_emb"),
        ("coca_base", "text.cls_emb"),
        ("ViT-B-32-256", "text_projection"),
        ("ViT-B-16-plus-240", "visual.proj"),
        pytest.param("ViT-H-14-378", "visual.proj", marks=pytest.mark.slow),  # 4 GB of stacked float32 layers
        # the timm SigLIP tower and open_clip's text tower with a 250k / 256k vocabulary: 1.5 GB each
        pytest.param("ViT-B-16-SigLIP-i18n-256", "visual.trunk.attn_pool.latent", marks=pytest.mark.slow),
        pytest.param("ViT-B-16-SigLIP2", "text.text_projection.bias", marks=pytest.mark.slow),
        # SO400M's text tower as wide as the embedding, without text_projection (proj_type 'none'): 2.2 GB
        pytest.param("ViT-SO400M-16-SigLIP-i18n-256", "text.ln_final.weight", marks=pytest.mark.slow),
    ],
)
def test_converters_account_for_every_key(name, dropped):
    """At full size without real weights: open_clip's tensors on the meta device, converted from
    zero-stride arrays of their shapes, so every key and shape is checked in seconds."""
    from jaxvlm.convert.open_clip import convert_state_dict

    with torch.device("meta"):
        reference = open_clip.create_model(name, pretrained=None, device="meta")
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in reference.state_dict().items()}
    params = convert_state_dict(state, name)
    leaves = [np.shape(x) for x in jax_leaves(params)]
    assert sum(int(np.prod(s)) for s in leaves) == sum(v.numel() for v in reference.state_dict().values())
    del state[dropped]
    with pytest.raises(jaxvlm.InputError, match=dropped):
        convert_state_dict(state, name)


def jax_leaves(tree):

    return jax.tree.leaves(tree)
