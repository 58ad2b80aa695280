"""The named architectures: each one's parameter count is pinned to open_clip's count of the same
architecture (its `create_model(name)` on the meta device, counted 2026-12-07 with open_clip 3.3.0),
and checked against open_clip itself by a slow test. The tiny ones are jaxvlm's own test sizes."""

import pytest

from jaxvlm.models import param_count
from jaxvlm.models.registry import get_architecture, list_models

OPEN_CLIP_PARAMETERS = {
    "ViT-B-16": 149_620_737,
    "ViT-B-16-quickgelu": 149_620_737,
    "ViT-B-32": 151_277_313,
    "ViT-B-32-quickgelu": 151_277_313,
    "ViT-L-14": 427_616_513,
    "ViT-L-14-quickgelu": 427_616_513,
    "ViT-L-14-336": 427_944_193,
    "ViT-L-14-336-quickgelu": 427_944_193,
    "ViT-B-32-256": 151_288_833,
    "ViT-B-16-plus-240": 208_377_345,
    "ViT-H-14": 986_109_441,
    "ViT-H-14-quickgelu": 986_109_441,
    "ViT-H-14-378": 986_714_881,
    "ViT-H-14-378-quickgelu": 986_714_881,
    "ViT-g-14": 1_366_678_273,
    "ViT-bigG-14": 2_539_567_105,
    "ViT-bigG-14-quickgelu": 2_539_567_105,
    "ViT-B-16-SigLIP": 203_155_970,
    "ViT-B-16-SigLIP-256": 203_202_050,
    "ViT-B-16-SigLIP-384": 203_447_810,
    "ViT-L-16-SigLIP-256": 652_150_786,
    "ViT-SO400M-14-SigLIP": 877_360_306,
    "ViT-SO400M-14-SigLIP-384": 877_960_498,
    "ViT-B-16-SigLIP-512": 203_791_874,
    "ViT-L-16-SigLIP-384": 652_478_466,
    "ViT-SO400M-14-SigLIP-378": 877_960_498,
    "ViT-B-16-SigLIP-i18n-256": 370_626_050,
    "ViT-SO400M-16-SigLIP-i18n-256": 1_127_430_706,
    "ViT-B-32-SigLIP2-256": 376_856_066,
    "ViT-B-16-SigLIP2": 375_187_970,
    "ViT-B-16-SigLIP2-256": 375_234_050,
    "ViT-B-16-SigLIP2-384": 375_479_810,
    "ViT-B-16-SigLIP2-512": 375_823_874,
    "ViT-L-16-SigLIP2-256": 881_526_786,
    "ViT-L-16-SigLIP2-384": 881_854_466,
    "ViT-L-16-SigLIP2-512": 882_313_218,
    "ViT-SO400M-14-SigLIP2": 1_135_463_602,
    "ViT-SO400M-14-SigLIP2-378": 1_136_008_498,
    "ViT-SO400M-16-SigLIP2-256": 1_135_670_962,
    "ViT-SO400M-16-SigLIP2-384": 1_136_039_602,
    "ViT-SO400M-16-SigLIP2-512": 1_136_555_698,
    "ViT-gopt-16-SigLIP2-256": 1_871_393_906,
    "ViT-gopt-16-SigLIP2-384": 1_871_885_426,
    "ViT-H-14-worldwide": 1_858_783_745,
    "ViT-H-14-worldwide-quickgelu": 1_858_783_745,
    "ViT-H-14-worldwide-378": 1_859_389_185,
    "ViT-bigG-14-worldwide": 3_630_409_985,
    "ViT-bigG-14-worldwide-378": 3_631_197_057,
    "coca_ViT-B-32": 253_560_065,
    "coca_ViT-L-14": 638_450_177,
    "coca_base": 440_337_409,
    "PE-Core-T-16-384": 69_546_113,
    "PE-Core-S-16-384": 87_188_225,
    "PE-Core-B-16": 447_660_545,
    "PE-Core-L-14-336": 671_138_817,
    "PE-Core-bigG-14-448": 2_419_267_841,
    "EVA01-g-14": 1_136_435_841,
    "EVA01-g-14-plus": 1_366_621_569,
    "EVA02-B-16": 149_691_137,
    "MobileCLIP-B": 149_777_153,
    "MobileCLIP2-B": 149_777_153,
    "MobileCLIP2-L-14": 427_617_281,
    "MobileCLIP-S1": 84_969_729,
    "MobileCLIP-S2": 99_243_329,
    "MobileCLIP2-S0": 74_835_073,
    "MobileCLIP2-S2": 99_243_329,
    "MobileCLIP2-S3": 248_885_953,
    "MobileCLIP2-S4": 445_435_137,
    "EVA02-L-14": 427_755_457,
    "EVA02-L-14-336": 428_083_137,
    "EVA02-E-14": 4_704_589_569,
    "EVA02-E-14-plus": 5_044_889_089,
    "RN50": 102_007_137,
    "RN50-quickgelu": 102_007_137,
    "RN101": 119_688_033,
    "RN101-quickgelu": 119_688_033,
    "RN50x4": 178_300_601,
    "RN50x4-quickgelu": 178_300_601,
    "RN50x16": 290_979_217,
    "RN50x16-quickgelu": 290_979_217,
    "RN50x64": 623_258_305,
    "RN50x64-quickgelu": 623_258_305,
    "convnext_base": 151_518_849,
    "convnext_base_w": 179_385_345,
    "convnext_base_w_320": 179_385_345,
    "convnext_large_d": 351_772_609,
    "convnext_large_d_320": 351_772_609,
    "convnext_xxlarge": 1_200_576_385,
    "ViTamin-S": 62_469_185,
    "ViTamin-S-LTT": 145_822_913,
    "ViTamin-B": 150_953_345,
    "ViTamin-B-LTT": 211_372_161,
    "ViTamin-L": 456_968_353,
    "ViTamin-L-256": 457_029_793,
    "ViTamin-L-336": 457_219_233,
    "ViTamin-L-384": 457_357_473,
    "ViTamin-L2": 687_612_833,
    "ViTamin-L2-256": 687_674_273,
    "ViTamin-L2-336": 687_863_713,
    "ViTamin-L2-384": 688_001_953,
    "ViTamin-XL-256": 924_776_257,
    "ViTamin-XL-336": 924_776_257,
    "ViTamin-XL-384": 924_776_257,
    "ViT-L-14-CLIPA": 414_210_561,
    "ViT-L-14-CLIPA-336": 414_538_241,
    "ViT-H-14-CLIPA": 968_235_009,
    "ViT-H-14-CLIPA-336": 968_644_609,
    "ViT-bigG-14-CLIPA": 2_517_223_937,
    "ViT-bigG-14-CLIPA-336": 2_517_756_417,
    # HF text towers: open_clip built over the published HF configs (tests/convert/hf_text_models.py)
    "roberta-ViT-B-32": 212_723_457,
    "xlm-roberta-base-ViT-B-32": 366_121_473,
    "xlm-roberta-large-ViT-H-14": 1_193_014_785,
    "nllb-clip-base": 501_885_185,
    "nllb-clip-large": 1_399_216_641,
    "nllb-clip-base-siglip": 507_474_178,
    "nllb-clip-large-siglip": 1_195_496_514,
}
# architectures open_clip does not build: counted with transformers' Siglip2Model of the same config
TRANSFORMERS_PARAMETERS = {"ViT-B-16-SigLIP2-NaFlex": 375_234_050, "ViT-SO400M-16-SigLIP2-NaFlex": 1_135_670_962}
# OFA-Sys's ChineseCLIPModel repos, as transformers builds them (tests/convert/test_chinese_clip.py checks)
CHINESE_CLIP_PARAMETERS = {
    "chinese-clip-ViT-B-16": 188_262_913,
    "chinese-clip-ViT-L-14": 406_233_089,
    "chinese-clip-ViT-L-14-336": 406_560_769,
    "chinese-clip-ViT-H-14": 957_598_209,
}
# kakaobrain/align-base: AlignModel(AlignConfig()) on the meta device has 172_117_841, less its text pooler (590_592),
# which AlignModel never runs (tests/convert/test_hf_align.py checks)
ALIGN_PARAMETERS = {"ALIGN-base": 171_527_249}
TINY_PARAMETERS = {
    "tiny-clip": 3_384_897,
    "tiny-clip-quickgelu": 3_384_897,
    "tiny-siglip": 2_316_674,
    "tiny-siglip-naflex": 3_430_786,
    "tiny-coca": 3_371_393,
}


def test_every_architecture_has_a_pinned_count():
    pinned = {
        **OPEN_CLIP_PARAMETERS,
        **TRANSFORMERS_PARAMETERS,
        **CHINESE_CLIP_PARAMETERS,
        **ALIGN_PARAMETERS,
        **TINY_PARAMETERS,
    }
    assert sorted(pinned) == list_models()


@pytest.mark.parametrize("name", sorted(TINY_PARAMETERS))
def test_tiny_parameter_counts(name):
    assert param_count(get_architecture(name).model) == TINY_PARAMETERS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted({**OPEN_CLIP_PARAMETERS, **TRANSFORMERS_PARAMETERS, **CHINESE_CLIP_PARAMETERS}))
def test_parameter_counts_are_pinned(name):
    count = param_count(get_architecture(name).model)
    print(f"{name}: {count:,} parameters")
    assert count == {**OPEN_CLIP_PARAMETERS, **TRANSFORMERS_PARAMETERS, **CHINESE_CLIP_PARAMETERS}[name]


def test_align_count_is_pinned():
    assert param_count(get_architecture("ALIGN-base").model) == ALIGN_PARAMETERS["ALIGN-base"]


@pytest.mark.slow
def test_pinned_counts_are_what_open_clip_builds(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    torch = pytest.importorskip("torch")
    from tests.convert.hf_text_models import hf_configs_offline, published_hf_configs

    for name, pinned in OPEN_CLIP_PARAMETERS.items():
        with hf_configs_offline(published_hf_configs(), tmp_path), torch.device("meta"):
            model = open_clip.create_model(name, pretrained=None, pretrained_text=False, device="meta")
        assert sum(p.numel() for p in model.parameters()) == pinned, name


@pytest.mark.slow
def test_naflex_counts_are_what_transformers_builds():
    """google/siglip2-*-patch16-naflex's configs: SigLIP 2 B/16 and So400m/16 with 256 learned positions."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    for name, pinned in TRANSFORMERS_PARAMETERS.items():
        v = get_architecture(name).model.vision
        t = get_architecture(name).model.text
        tower = dict(
            hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth, num_attention_heads=v.heads
        )
        text = dict(
            hidden_size=t.width, intermediate_size=t.mlp_dim, num_hidden_layers=t.depth, num_attention_heads=t.heads
        )
        config = transformers.Siglip2Config(
            vision_config={**tower, "patch_size": v.patch_size, "num_patches": v.position_grid**2},
            text_config={**text, "vocab_size": t.vocab_size, "max_position_embeddings": t.context_length},
        )
        with torch.device("meta"):
            model = transformers.Siglip2Model(config)
        assert sum(p.numel() for p in model.parameters()) == pinned, name
