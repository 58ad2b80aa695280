"""MetaCLIP 2 worldwide from both of its sources, with no --model: a tiny perturbed open_clip model saved as a hub
repo (open_clip's CLIP with an XLM-V-style tokenizer and EOS pooling) and a tiny perturbed transformers
MetaClip2Model saved with save_pretrained, its tokenizer and its image processor. Both are converted by the CLI
and compared with their own library: token ids, preprocessing and embeddings. The tokenizer is XLM-R's layout
(<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last) over a tiny Unigram vocabulary, saved as XLM-V's hub repo holds it
(a tokenizer.json with SentencePiece's normaliser and a Metaspace pre-tokenizer), which transformers'
XLMRobertaTokenizer rebuilds: jaxvlm must tokenize as that rebuild does, not as the file alone would. Slow: the
converter accounts for every key of open_clip's five full-size worldwide architectures."""

import copy
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import jaxvlm
from jaxvlm.cli import main
from jaxvlm.convert import open_clip as open_clip_converter
from jaxvlm.models import param_shapes
from jaxvlm.models.registry import ARCHITECTURES
from tests.convert.hf_models import features, perturbed
from tests.convert.open_clip_models import (
    CAPTIONS,
    CLIP_PREPROCESS,
    TOLERANCE,
    compare_with_open_clip,
    load_on_one_device,
    max_abs,
    photos,
    save_repo,
)
from tests.convert.open_clip_models import perturbed as perturbed_open_clip
from tests.hub_server import HubServer
from tests.paths import REPO

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

# texts whose ids differ between the tokenizer.json alone and transformers' rebuild of it, and other scripts
MULTILINGUAL = [
    *CAPTIONS,
    "une photo d'un chat",
    "猫の写真 éü",
    "ｆｕｌｌ width <mask> and a </s> inside",
    "ends with an ideographic space\u3000",
]
CONTEXT = 16
WORLDWIDE = [
    "ViT-H-14-worldwide",
    "ViT-H-14-worldwide-quickgelu",
    "ViT-H-14-worldwide-378",
    "ViT-bigG-14-worldwide",
    "ViT-bigG-14-worldwide-378",
]


def xlm_v_style_tokenizer(directory, vocab_size=300):
    """XLM-V's hub layout at a tiny size: tokenizer.json (a Unigram model trained here with SentencePiece and laid
    out as transformers' XLM-R converter lays out fairseq's: <s>, <pad>, </s>, <unk>, the pieces, <mask>; its
    precompiled NFKC normaliser then spaces collapsed; Metaspace; <s> $A </s>) and tokenizer_config.json."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    directory.mkdir(parents=True)
    syllables = "ka to ri mo su ne pa lu shi ve an or ing the cat dog sky red blu ph x qu zz é ü 猫 写真 の".split()
    rng = random.Random(0)
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(2000)]
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(3000)))
    prefix = directory / "spm"
    spm.SentencePieceTrainer.train(  # fairseq's layout: <unk> 0, <s> 1, </s> 2
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram", minloglevel=2
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((directory / "spm.model").read_bytes())
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = [(p, 0.0) for p in specials] + [(p.piece, p.score) for p in proto.pieces[3:]] + [("<mask>", 0.0)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.add_special_tokens([*specials, "<mask>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    names = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>"}
    settings = {"tokenizer_class": "XLMRobertaTokenizer", **names, "pad_token": "<pad>", "mask_token": "<mask>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    for name in ("corpus.txt", "spm.model", "spm.vocab"):
        (directory / name).unlink()
    return directory, tokenizer.get_vocab_size()


@pytest.fixture(scope="module")
def xlm_v(tmp_path_factory):
    return xlm_v_style_tokenizer(tmp_path_factory.mktemp("tokenizers") / "xlm-v-style")


def copy_tokenizer(source, directory):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, directory / name)


def test_tokenizer_is_transformers_rebuild_not_the_file(xlm_v):
    """The file alone puts a lone '▁' before a special token and at a text's end; XLMRobertaTokenizer does not."""
    from tokenizers import Tokenizer

    from jaxvlm.tokenizers import TokenizerConfig, build_tokenizer

    source, _ = xlm_v
    reference = transformers.AutoTokenizer.from_pretrained(source)
    expected = reference(MULTILINGUAL, padding="max_length", max_length=CONTEXT, truncation=True).input_ids
    cfg = TokenizerConfig(kind="hf_json", file="tokenizer.json", context_length=CONTEXT, clean="none", pad_id=1)
    np.testing.assert_array_equal(build_tokenizer(cfg.replace(whitespace_split=True), source)(MULTILINGUAL), expected)
    alone = Tokenizer.from_file(str(source / "tokenizer.json")).encode("a </s> b").ids
    assert alone != reference("a </s> b").input_ids


# ---------------------------------------------------------------- open_clip


def tiny_worldwide_cfg(vocab_size):
    """ViT-H-14-worldwide-quickgelu's options at tiny sizes (towers of different shapes, so swaps show)."""
    return {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
        "text_cfg": {
            "hf_tokenizer_name": "facebook/xlm-v-base",
            "pool_type": "eos",
            "eos_id": 2,
            "context_length": CONTEXT,
            "vocab_size": vocab_size,
            "width": 48,
            "heads": 3,
            "layers": 3,
        },
    }


def tiny_worldwide_repo(directory, xlm_v):
    """A perturbed open_clip CLIP of tiny_worldwide_cfg saved by save_for_hf, holding XLM-V-style tokenizer files
    as the hub does (save_for_hf writes transformers' rebuild; the hub's tokenizer.json is the original)."""
    from open_clip.tokenizer import HFTokenizer

    source, vocab_size = xlm_v
    cfg = tiny_worldwide_cfg(vocab_size)
    torch.manual_seed(0)
    model = perturbed_open_clip(open_clip.CLIP(**copy.deepcopy(cfg)))
    tokenizer = HFTokenizer(str(source), context_length=CONTEXT)
    save_repo(directory, model, tokenizer, cfg, CLIP_PREPROCESS, safe_serialization=True)
    copy_tokenizer(source, directory)
    return directory


def test_open_clip_worldwide_repo_converts_without_model(xlm_v, tmp_path):
    from open_clip.tokenizer import HFTokenizer

    repo = tiny_worldwide_repo(tmp_path / "repo", xlm_v)
    out = tmp_path / "model"
    assert main(["convert", "--from", "open_clip", str(repo), str(out)]) == 0
    model = compare_with_open_clip(out, repo, "open_clip repo tiny MetaCLIP 2 worldwide (XLM-V-style tokenizer.json)")
    assert (model.config.text.pool, model.config.text.eos_id, model.config.text.act) == ("eos", 2, "quick_gelu")
    tokenizer = json.loads((out / "config.json").read_text())["tokenizer"]
    registered = ARCHITECTURES["ViT-H-14-worldwide"].tokenizer.replace(context_length=CONTEXT)
    assert tokenizer == registered.to_dict(), tokenizer
    reference = HFTokenizer(str(repo), context_length=CONTEXT)  # what open_clip's get_tokenizer builds there
    np.testing.assert_array_equal(model.tokenize(MULTILINGUAL), reference(MULTILINGUAL).numpy())


def test_open_clip_repo_without_tokenizer_files_takes_xlm_v_from_the_hub(xlm_v, tmp_path):
    """As facebook/xlm-v-base holds it: tokenizer.json and config.json (model type xlm-roberta), no
    tokenizer_config.json; AutoTokenizer then builds XLMRobertaTokenizer (pad <pad>), and so must jaxvlm."""
    source, _ = xlm_v
    hub_repo = tmp_path / "xlm-v-base"
    hub_repo.mkdir()
    shutil.copy(source / "tokenizer.json", hub_repo / "tokenizer.json")
    (hub_repo / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "pad_token_id": 1}))
    repo = tiny_worldwide_repo(tmp_path / "repo", xlm_v)
    for path in repo.iterdir():
        if path.name not in ("open_clip_config.json", "open_clip_model.safetensors"):
            path.unlink()
    out = tmp_path / "model"
    with HubServer(tmp_path / "repos") as server:
        server.publish("facebook/xlm-v-base", hub_repo)
        offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XLA_FLAGS")
        env = {k: v for k, v in os.environ.items() if k not in offline}
        env |= {"HF_ENDPOINT": server.endpoint, "HF_HOME": str(tmp_path / "hf"), "JAXVLM_CACHE": str(tmp_path / "c")}
        command = [sys.executable, "-m", "jaxvlm.cli", "convert", "--from", "open_clip", str(repo), str(out)]
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    tokenizer = json.loads((out / "config.json").read_text())["tokenizer"]
    registered = ARCHITECTURES["ViT-H-14-worldwide"].tokenizer.replace(context_length=CONTEXT)
    assert tokenizer == registered.to_dict(), tokenizer
    reference = transformers.AutoTokenizer.from_pretrained(hub_repo)
    expected = reference(MULTILINGUAL, padding="max_length", max_length=CONTEXT, truncation=True).input_ids
    np.testing.assert_array_equal(load_on_one_device(out).tokenize(MULTILINGUAL), expected)


def test_worldwide_architectures_are_open_clips():
    """open_clip's configs map to the registered architectures, which pool at XLM-V's </s> and tokenize as its
    HFTokenizer does; their towers' FLOPs are those of the CLIP ViTs of the same shapes (the embedding is a
    gather, however large the vocabulary)."""
    from jaxvlm.convert.open_clip_repo import model_config_from_open_clip
    from jaxvlm.models.towers import flops_per_example

    for name in WORLDWIDE:
        arch = ARCHITECTURES[name]
        assert model_config_from_open_clip(open_clip.get_model_config(name), name) == arch.model, name
        assert (arch.model.text.vocab_size, arch.model.text.pool, arch.model.text.eos_id) == (901629, "eos", 2)
        assert (arch.tokenizer.pad_id, arch.tokenizer.clean, arch.tokenizer.whitespace_split) == (1, "whitespace", True)
    worldwide, clip = ARCHITECTURES["ViT-H-14-worldwide"].model, ARCHITECTURES["ViT-H-14"].model
    assert flops_per_example(worldwide.text, worldwide.embed_dim) == flops_per_example(clip.text, clip.embed_dim)
    assert flops_per_example(worldwide.vision, worldwide.embed_dim) == flops_per_example(clip.vision, clip.embed_dim)


def test_worldwide_pretrained_pairs_load():
    """open_clip's five (timm/vit_*_clip_*.metaclip2_worldwide) and the four transformers repos."""
    pairs = [(a, t) for a, t in jaxvlm.list_pretrained() if a in WORLDWIDE]
    assert sorted(t for _, t in pairs) == [
        "facebook/metaclip-2-worldwide-giant",
        "facebook/metaclip-2-worldwide-giant-378",
        "facebook/metaclip-2-worldwide-huge-378",
        "facebook/metaclip-2-worldwide-huge-quickgelu",
        *["metaclip2_worldwide"] * 5,
    ]
    assert all(jaxvlm.pretrained.get_pretrained(*pair).loads for pair in pairs), pairs


def shapes_only_stack(depth, one_layer, prefix):
    """stack_layers without the copy: every layer's tensors taken (so each key is accounted for) and checked to
    have one shape, the stack a zero-stride view of the first (full-size stacks would take 15 GB)."""
    layers = [one_layer(i) for i in range(depth)]
    for layer in layers:
        assert {k: v.shape for k, v in layer.items()} == {k: v.shape for k, v in layers[0].items()}
    return {f"{prefix}/{k}": np.broadcast_to(v, (depth, *v.shape)) for k, v in layers[0].items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", WORLDWIDE)
def test_converter_accounts_for_every_key_at_full_size(name, monkeypatch):
    """open_clip's full-size tensors on the meta device, converted from zero-stride arrays of their shapes."""
    from jaxvlm.errors import InputError

    monkeypatch.setattr(open_clip_converter, "stack_layers", shapes_only_stack)
    with torch.device("meta"):
        reference = open_clip.create_model(name, pretrained=None, device="meta")
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in reference.state_dict().items()}
    params = open_clip_converter.convert_state_dict(state, name)
    got = {"/".join(k): v.shape for k, v in jaxvlm_leaves(params)}
    assert got == param_shapes(ARCHITECTURES[name].model)
    assert sum(int(np.prod(s)) for s in got.values()) == sum(v.numel() for v in reference.state_dict().values())
    del state["text.token_embedding.weight" if "text.token_embedding.weight" in state else "token_embedding.weight"]
    with pytest.raises(InputError, match="token_embedding"):
        open_clip_converter.convert_state_dict(state, name)


def jaxvlm_leaves(params):
    from flax.traverse_util import flatten_dict

    return flatten_dict(params).items()


# ---------------------------------------------------------------- transformers


def tiny_metaclip2_config(vocab_size):
    """MetaClip2Config at tiny sizes: XLM-R's special ids (</s> 2 is pooled), towers of different shapes."""
    text = dict(
        vocab_size=vocab_size,
        max_position_embeddings=CONTEXT,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=3,
        hidden_act="gelu",
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        hidden_act="gelu",
    )
    return transformers.MetaClip2Config(text_config=text, vision_config=vision, projection_dim=32)


@pytest.fixture(scope="module")
def hf_metaclip2(xlm_v, tmp_path_factory):
    """A perturbed MetaClip2Model saved with save_pretrained, XLM-V-style tokenizer files and CLIP's Pil image
    processor (which transformers pairs with MetaClip2): (reference, directory, processor)."""
    source, vocab_size = xlm_v
    reference = perturbed(transformers.MetaClip2Model, tiny_metaclip2_config(vocab_size))
    directory = tmp_path_factory.mktemp("hf") / "metaclip2"
    reference.save_pretrained(directory)
    copy_tokenizer(source, directory)
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32)
    processor.save_pretrained(directory)
    return reference, directory, processor


def test_hf_metaclip2_converts_without_model(hf_metaclip2, tmp_path):
    reference, directory, processor = hf_metaclip2
    assert main(["convert", "--from", "hf", str(directory), str(tmp_path / "out")]) == 0
    model = load_on_one_device(tmp_path / "out")
    assert (model.config.text.pool, model.config.text.eos_id) == ("eos", 2)
    assert model.provenance["model_type"] == "metaclip_2"

    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    assert type(tokenizer).__name__ == "XLMRobertaTokenizer"
    ids = model.tokenize(MULTILINGUAL)
    ref_ids = tokenizer(MULTILINGUAL, padding="max_length", max_length=CONTEXT, truncation=True).input_ids
    np.testing.assert_array_equal(ids, np.asarray(ref_ids))

    pixels = model.preprocess(photos())
    ref_pixels = processor(photos(), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    zi, zt = model.encode_image(pixels), model.encode_text(ids)
    with torch.no_grad():
        ref_zi = features(reference.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)))
        ref_zt = features(reference.get_text_features(input_ids=torch.from_numpy(ids).long()))
    errors = {"pixels": max_abs(pixels, ref_pixels), "image": max_abs(zi, ref_zi), "text": max_abs(zt, ref_zt)}
    print("\nhf MetaClip2Model vs transformers max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert all(e <= TOLERANCE for e in errors.values()), errors


LOAD = """
import json, sys
import jaxvlm
model = jaxvlm.load(sys.argv[1])
ids = model.tokenize(sys.argv[2:])
print(json.dumps({"ids": ids.tolist(), "text": model.encode_text(ids).tolist()}))
"""


def test_hf_metaclip2_loads_by_hub_name(hf_metaclip2, tmp_path):
    """jaxvlm.load("hf-hub:facebook/metaclip-2-worldwide-...") against the test's stand-in hub, in a process of its
    own (huggingface_hub reads HF_ENDPOINT when imported)."""
    reference, directory, _ = hf_metaclip2
    texts = MULTILINGUAL[:3]
    with HubServer(tmp_path / "repos") as server:
        server.publish("facebook/metaclip-2-worldwide-tiny", directory)
        offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XLA_FLAGS")
        env = {k: v for k, v in os.environ.items() if k not in offline}
        env |= {"HF_ENDPOINT": server.endpoint, "HF_HOME": str(tmp_path / "hf"), "JAXVLM_CACHE": str(tmp_path / "c")}
        name = "hf-hub:facebook/metaclip-2-worldwide-tiny"
        done = subprocess.run([sys.executable, "-c", LOAD, name, *texts], env=env, cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    loaded = json.loads(done.stdout.decode().splitlines()[-1])
    ids = np.asarray(loaded["ids"])
    with torch.no_grad():
        ref_zt = features(reference.get_text_features(input_ids=torch.from_numpy(ids).long()))
    error = max_abs(loaded["text"], ref_zt)
    print(f"\n{name} text vs transformers max abs error {error:.2e}")
    assert ids[0, 0] == 0 and 2 in ids[0] and error <= TOLERANCE
