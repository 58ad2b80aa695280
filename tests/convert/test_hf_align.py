"""HF ALIGN (transformers' AlignModel: an EfficientNet image tower and BERT). A tiny perturbed model, BatchNorm
statistics included, saved with save_pretrained with a BERT WordPiece tokenizer and an EfficientNetImageProcessor
set as kakaobrain/align-base's conversion sets it, converts with no --model and matches transformers: token ids,
preprocessing, embeddings and logits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from jaxvlm.cli import main
from jaxvlm.convert import hf
from jaxvlm.errors import InputError
from jaxvlm.models.towers import EfficientNetConfig
from tests.convert.hf_models import perturbed
from tests.convert.open_clip_models import load_on_one_device, max_abs
from tests.hub_server import HubServer
from tests.paths import REPO
from tests.wordpiece import tiny_bert_tokenizer

transformers = pytest.importorskip("transformers")

CAPTIONS = ["A photo of a CAT.", "ka to ri mo su ne", "", "the red cat on the blue sky, " * 12]
SIZE, RESIZE = 32, 39  # an odd margin: the centre crop's offset rounds down


def tiny_config():
    """AlignConfig at tiny sizes: three stages (expand ratio 1 and 6, strides 1 and 2, kernels 3 and 5), a depth
    coefficient that repeats blocks, a width coefficient that rounds channels, one symmetric-padding block."""
    text = dict(
        vocab_size=600,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=3,
        max_position_embeddings=80,
    )
    vision = dict(
        image_size=SIZE,
        width_coefficient=0.5,
        depth_coefficient=1.5,
        kernel_sizes=[3, 5, 3],
        in_channels=[32, 16, 24],
        out_channels=[16, 24, 40],
        strides=[1, 2, 2],
        num_block_repeats=[1, 1, 2],
        expand_ratios=[1, 6, 4],
        depthwise_padding=[3],
        hidden_dim=64,
    )
    return transformers.AlignConfig(text_config=text, vision_config=vision, projection_dim=24)


def perturbed_align(config):
    model = perturbed(transformers.AlignModel, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.temperature.fill_(0.07)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    return model


def image_processor():
    """What transformers' ALIGN conversion saved with align-base, at the tiny size."""
    return transformers.EfficientNetImageProcessorPil(
        size={"height": RESIZE, "width": RESIZE},
        crop_size={"height": SIZE, "width": SIZE},
        do_center_crop=True,
        rescale_factor=1 / 127.5,
        rescale_offset=True,
        do_normalize=False,
        include_top=False,
        resample=Image.Resampling.BILINEAR,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    directory = root / "repo"
    perturbed_align(tiny_config()).save_pretrained(directory)
    transformers.BertTokenizerFast.from_pretrained(tiny_bert_tokenizer(root / "bert")).save_pretrained(directory)
    image_processor().save_pretrained(directory)  # preprocessor_config.json, as align-base holds it
    return directory


@pytest.fixture(scope="module")
def converted(repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("align-converted") / "model"
    assert main(["convert", "--from", "hf", str(repo), str(out)]) == 0
    return out


def photos():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)) for shape in ((50, 70, 3), (41, 33, 3))]


def test_tiny_align_matches_transformers(repo, converted):
    model = load_on_one_device(converted)
    reference = transformers.AlignModel.from_pretrained(repo).eval()
    processor = transformers.AlignProcessor(
        transformers.EfficientNetImageProcessorPil.from_pretrained(repo),
        transformers.AutoTokenizer.from_pretrained(repo),
    )
    ids = model.tokenize(CAPTIONS)
    ref = processor(text=CAPTIONS, images=photos(), truncation=True, return_tensors="pt")
    np.testing.assert_array_equal(ids, ref.input_ids.numpy())
    pixels = model.preprocess(photos())
    errors = {"preprocess": max_abs(pixels, ref.pixel_values.permute(0, 2, 3, 1))}
    zi, zt = model.encode_image(pixels), model.encode_text(ids)
    with torch.no_grad():
        out = reference(input_ids=ref.input_ids, attention_mask=ref.attention_mask, pixel_values=ref.pixel_values)
    errors["image"] = max_abs(zi, out.image_embeds)
    errors["text"] = max_abs(zt, out.text_embeds)
    errors["logits"] = max_abs(model.logits(zi, zt), out.logits_per_image)
    print(f"\ntiny AlignModel vs transformers max abs error: {errors}")
    assert max(errors.values()) <= 1e-5, errors
    assert ids.shape == (len(CAPTIONS), 64)
    assert model.batch_stats  # the running statistics came along


LOAD = """
import json, sys
import numpy as np
import jaxvlm
model = jaxvlm.load(sys.argv[1])
pixels = np.linspace(-1, 1, 2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
text = model.encode_text(model.tokenize(["a cat"]))
print(json.dumps({"image": model.encode_image(pixels).tolist(), "text": text.tolist()}))
"""


def test_tiny_align_loads_by_hub_name(repo, tmp_path):
    """jaxvlm.load("hf-hub:kakaobrain/...") against the test's stand-in hub, in a process of its own."""
    with HubServer(tmp_path / "repos") as server:
        server.publish("kakaobrain/align-tiny", repo)
        offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XLA_FLAGS")
        env = {k: v for k, v in os.environ.items() if k not in offline}
        env |= {"HF_ENDPOINT": server.endpoint, "HF_HOME": str(tmp_path / "hf"), "JAXVLM_CACHE": str(tmp_path / "c")}
        done = subprocess.run(
            [sys.executable, "-c", LOAD, "hf-hub:kakaobrain/align-tiny"], env=env, cwd=REPO, capture_output=True
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    loaded = json.loads(done.stdout.decode().splitlines()[-1])
    reference = transformers.AlignModel.from_pretrained(repo).eval()
    ids = transformers.AutoTokenizer.from_pretrained(repo)(["a cat"], padding="max_length", max_length=64)
    pixels = torch.linspace(-1, 1, 2 * 32 * 32 * 3).reshape(2, 32, 32, 3).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = reference(
            input_ids=torch.tensor(ids.input_ids),
            attention_mask=torch.tensor(ids.attention_mask),
            pixel_values=pixels.contiguous(),
        )
    errors = {"image": max_abs(loaded["image"], out.image_embeds), "text": max_abs(loaded["text"], out.text_embeds)}
    print(f"\nhf-hub:kakaobrain/align-tiny vs transformers max abs error: {errors}")
    assert max(errors.values()) <= 1e-5, errors


def test_blocks_are_transformers(repo):
    """The block list (channels, strides, residuals, padding) is AlignVisionEncoder's."""
    cfg = hf.model_config(tiny_config().to_dict(), "x")[1].vision
    reference = transformers.AlignModel.from_pretrained(repo).vision_model.encoder.blocks
    assert len(cfg.blocks) == len(reference) == 7  # ceil(1.5 * repeats)
    for spec, block in zip(cfg.blocks, reference):
        conv, project = block.depthwise_conv.depthwise_conv, block.projection.project_conv
        assert (spec.stride, spec.kernel, spec.in_channels * spec.expand_ratio) == (
            conv.stride[0],
            conv.kernel_size[0],
            conv.in_channels,
        )
        assert (spec.out_channels, spec.residual) == (project.out_channels, block.projection.apply_dropout)
        padding = block.depthwise_conv.depthwise_conv_pad.padding
        assert padding[0] == (spec.kernel // 2 if spec.symmetric else spec.kernel // 2 - 1)
    assert [spec.symmetric for spec in cfg.blocks] == [False, False, False, True, False, False, False]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"temperature_init_value": 0.0}, "temperature_init_value must be a positive number"),
        ({"vision_config": {"hidden_act": "relu"}}, "hidden_act 'relu' is not supported"),
        ({"vision_config": {"strides": [1, 3, 2]}}, "strides must be 1 or 2"),
        ({"vision_config": {"strides": [1, 2]}}, "strides must list one value per stage"),
        ({"projection_dim": 32}, "embed_dim 32 is not the efficientnet tower's final width 24"),
    ],
)
def test_bad_configs_are_one_line_errors(change, message):
    config = tiny_config().to_dict()
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    with pytest.raises(InputError, match=message):
        hf.model_config(config, "config.json")


def test_bad_weights_are_one_line_errors(repo, tmp_path):
    from safetensors.numpy import load_file, save_file

    weights = load_file(repo / "model.safetensors")
    for name, edit in {
        "missing": lambda w: w.pop("vision_model.encoder.blocks.2.projection.project_bn.running_var"),
        "extra": lambda w: w.update({"vision_model.extra.weight": np.zeros(2, np.float32)}),
        "negative": lambda w: w.update({"temperature": np.array(-1.0, np.float32)}),
    }.items():
        bad = tmp_path / name
        bad.mkdir()
        for file in repo.iterdir():
            if file.name != "model.safetensors":
                (bad / file.name).write_bytes(file.read_bytes())
        changed = dict(weights)
        edit(changed)
        save_file(changed, bad / "model.safetensors")
        with pytest.raises(InputError) as e:
            hf.convert(bad, None)
        assert "\n" not in str(e.value)
        assert {"missing": "missing key", "extra": "unused source keys", "negative": "must be positive"}[name] in str(
            e.value
        )


def align_base_config():
    """kakaobrain/align-base's config: AlignConfig's defaults but for what transformers' conversion set."""
    vision = transformers.AlignVisionConfig(image_size=289, hidden_dim=640, depthwise_padding=[])
    return transformers.AlignConfig(vision_config=vision, projection_dim=640)


def test_align_base_preprocessing_is_the_registered_one(tmp_path):
    """The processor transformers' conversion saved with align-base (EfficientNetImageProcessor's 346 / 289)."""
    from jaxvlm.models.registry import ARCHITECTURES

    transformers.EfficientNetImageProcessorPil(
        do_center_crop=True,
        rescale_factor=1 / 127.5,
        rescale_offset=True,
        do_normalize=False,
        include_top=False,
        resample=Image.Resampling.BILINEAR,
    ).save_pretrained(tmp_path)
    registered = ARCHITECTURES["ALIGN-base"]
    converted = hf.preprocess_config(tmp_path, "align", registered.model.vision)
    np.testing.assert_allclose(converted.mean + converted.std, registered.preprocess.mean + registered.preprocess.std)
    assert converted.replace(mean=(0.5,) * 3, std=(0.5,) * 3) == registered.preprocess


def test_align_base_architecture_is_the_hub_config():
    from jaxvlm.models.registry import ARCHITECTURES
    from jaxvlm.pretrained import get_pretrained, list_pretrained

    _, cfg = hf.model_config(align_base_config().to_dict(), "align-base")
    assert isinstance(cfg.vision, EfficientNetConfig) and cfg.vision.features == 640 and len(cfg.vision.blocks) == 55
    assert cfg == ARCHITECTURES["ALIGN-base"].model
    hf._check_model_name("ALIGN-base", cfg, "align-base")
    assert [get_pretrained(a, t).loads for a, t in list_pretrained() if a == "ALIGN-base"] == [True]


@pytest.mark.slow
def test_full_size_keys_and_count_are_transformers():
    """AlignModel at align-base's sizes on the meta device: its keys convert to exactly jaxvlm's tree."""
    import jax

    from jaxvlm.convert.common import SourceKeys, check_params
    from jaxvlm.convert.open_clip import BATCH_STATS
    from jaxvlm.models.registry import ARCHITECTURES

    config, model_class = align_base_config(), transformers.AlignModel
    with torch.device("meta"):
        reference = model_class(config)
    state = {k: np.broadcast_to(np.float32(1), tuple(v.shape)) for k, v in reference.state_dict().items()}
    counters = tuple(k for k in state if k.endswith("num_batches_tracked"))
    cfg = ARCHITECTURES["ALIGN-base"].model
    src = SourceKeys(state, "align-base", ignore=hf.NON_PARAMETERS + counters)
    flat = hf.PARAM_READERS["align"](src, cfg)
    src.check_all_used()
    stats = {k.removeprefix(f"{BATCH_STATS}/"): flat.pop(k) for k in [k for k in flat if k.startswith(BATCH_STATS)]}
    params = check_params(cfg, flat, "align-base")
    check_params(cfg, stats, "align-base", BATCH_STATS)
    count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    pooler = sum(p.numel() for n, p in reference.named_parameters() if n in hf.ALIGN_UNUSED)
    assert count == sum(p.numel() for p in reference.parameters()) - pooler  # tests/models/test_registry.py pins it
    print(f"\nALIGN-base: {count:_} parameters (and the unused text pooler's {pooler:_})")


def test_export_to_transformers_is_refused():
    from jaxvlm.export.hf import family
    from jaxvlm.models.registry import ARCHITECTURES

    with pytest.raises(InputError, match="vision.kind 'efficientnet' .needs 'vit'.*not expressible as CLIPModel"):
        family(ARCHITECTURES["ALIGN-base"].model)


def test_processor_defaults_normalise_twice_like_transformers(tmp_path):
    """EfficientNetImageProcessor's own defaults (bicubic, / 255, normalise, then include_top's second division by
    the std) fold into one mean and std: pixels within 1e-5 of transformers'."""
    from jaxvlm.preprocess import preprocess

    processor = transformers.EfficientNetImageProcessorPil(
        size={"height": RESIZE, "width": RESIZE}, crop_size={"height": SIZE, "width": SIZE}, do_center_crop=True
    )
    processor.save_pretrained(tmp_path)
    cfg = hf.preprocess_config(tmp_path, "align", EfficientNetConfig(image_size=SIZE))
    ours = preprocess(photos(), cfg)
    theirs = processor(photos(), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    error = max_abs(ours, theirs)
    print(f"\nEfficientNetImageProcessor defaults vs jaxvlm: max abs error {error:.2e}")
    assert error <= 1e-5 and cfg.interpolation == "bicubic" and cfg.resize_size == RESIZE
