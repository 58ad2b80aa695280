import itertools

import numpy as np
import pytest
from PIL import Image

from jaxvlm.errors import InputError
from jaxvlm.preprocess import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    OPENAI_MEAN,
    OPENAI_STD,
    PreprocessConfig,
    load_image,
    preprocess,
)

NORMS = {"openai": (OPENAI_MEAN, OPENAI_STD), "inception": (INCEPTION_MEAN, INCEPTION_STD)}
SIZES = (224, 256, 336, 384)


@pytest.fixture(scope="module")
def photos():
    """Real photos in many sizes, aspect ratios and PIL modes."""
    data = pytest.importorskip("skimage.data")
    rgb = {
        name: Image.fromarray(getattr(data, name)())
        for name in (
            "astronaut",
            "chelsea",
            "coffee",
            "rocket",
            "hubble_deep_field",
            "immunohistochemistry",
            "colorwheel",
            "logo",
        )
    }  # logo is RGBA
    gray = {
        name: Image.fromarray(getattr(data, name)()) for name in ("camera", "coins", "page", "text", "microaneurysms")
    }
    coffee, chelsea = rgb["coffee"], rgb["chelsea"]
    alpha = Image.fromarray(np.linspace(0, 255, coffee.width, dtype=np.uint8)[None].repeat(coffee.height, 0))
    extra = {
        "coffee_portrait": coffee.transpose(Image.Transpose.TRANSPOSE),
        # odd sizes, so the centre-crop offset lands on a half and Python's round matters
        "rocket_odd": rgb["rocket"].crop((3, 5, 3 + 517, 5 + 333)),
        "astronaut_odd": rgb["astronaut"].crop((0, 0, 401, 293)),
        "coffee_rgba": Image.merge("RGBA", (*coffee.split(), alpha)),
        "chelsea_palette": chelsea.quantize(64),
        "chelsea_cmyk": chelsea.convert("CMYK"),
        "chelsea_la": chelsea.convert("LA"),
        "camera_16bit": Image.fromarray(data.camera().astype(np.uint16) * 3),
        "horse_1bit": Image.fromarray(data.horse()),
        "tiny": chelsea.resize((23, 17)),
    }
    images = {**rgb, **gray, **extra}
    modes = {img.mode for img in images.values()}
    assert {"RGB", "RGBA", "L", "P", "CMYK", "LA", "I;16", "1"} <= modes, modes
    return images


@pytest.fixture(scope="module")
def open_clip_transform():
    transform = pytest.importorskip("open_clip.transform")
    return transform.image_transform


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("image_size", SIZES)
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_matches_open_clip(photos, open_clip_transform, resize_mode, interpolation, image_size, norm):
    mean, std = NORMS[norm]
    cfg = PreprocessConfig(image_size, resize_mode, interpolation, mean, std)
    ref_transform = open_clip_transform(
        image_size, is_train=False, mean=mean, std=std, resize_mode=resize_mode, interpolation=interpolation
    )
    names = list(photos)
    got = preprocess([photos[n] for n in names], cfg)
    assert got.shape == (len(names), image_size, image_size, 3) and got.dtype == np.float32
    errors = {}
    for name, out in zip(names, got):
        ref = ref_transform(photos[name]).permute(1, 2, 0).numpy()
        errors[name] = float(np.abs(out - ref).max())
    worst = max(errors, key=errors.get)
    print(f"{resize_mode}/{interpolation}/{image_size}/{norm}: max abs error {errors[worst]:.3g} ({worst})")
    assert errors[worst] <= 1e-5, errors


def test_crop_padding_matches_torchvision():
    """The zero padding when the crop is bigger than the image (unreachable through Resize(int))."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from jaxvlm.preprocess import _crop_offset

    rng = np.random.default_rng(0)
    for (w, h), mode in itertools.product([(5, 8), (8, 5), (3, 3), (12, 7)], ["RGB", "RGBA", "L", "P"]):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        size = 9
        left, top = _crop_offset(w, size), _crop_offset(h, size)
        ours = img.crop((left, top, left + size, top + size)).convert("RGB")
        ref = tvf.center_crop(img, [size, size]).convert("RGB")
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref), err_msg=f"{w}x{h} {mode}")


def test_config_round_trip_and_validation():
    cfg = PreprocessConfig(256, "squash", "bilinear", INCEPTION_MEAN, INCEPTION_STD)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["mean"] == [0.5, 0.5, 0.5] and cfg.to_dict()["std"] == [0.5, 0.5, 0.5]  # JSON lists
    assert PreprocessConfig.from_dict({"image_size": 224}) == PreprocessConfig(224)
    with pytest.raises(InputError, match="colour_space"):
        PreprocessConfig.from_dict({"image_size": 224, "colour_space": "rgb"})
    with pytest.raises(InputError, match="image_size"):
        PreprocessConfig.from_dict({"resize_mode": "squash"})
    for bad, field in [
        ({"resize_mode": "longest"}, "resize_mode"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": 22.4}, "image_size"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": [0.5, 0.0, 0.5]}, "std"),
    ]:
        with pytest.raises(InputError, match=field):
            PreprocessConfig.from_dict({"image_size": 224, **bad})


def test_bad_inputs(tmp_path):
    cfg = PreprocessConfig(224)
    with pytest.raises(InputError, match="no images"):
        preprocess([], cfg)
    with pytest.raises(InputError, match="image 1"):
        preprocess([Image.new("RGB", (4, 4)), np.zeros((4, 4, 3))], cfg)

    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a jpeg\x00\x01\x02" * 10)
    with pytest.raises(InputError, match="not an image: .*junk.jpg"):
        load_image(junk)
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match="missing.png"):
        load_image(missing)

    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "ok.png")
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:-30])
    with pytest.raises(InputError, match="truncated.png"):
        load_image(truncated)


def test_load_image_keeps_mode(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (40, 30), (200, 100, 50)).quantize(8).save(path)
    img = load_image(str(path))
    assert img.mode == "P" and img.size == (40, 30)
    px = preprocess([img], PreprocessConfig(32))
    rgb = np.array([200, 100, 50], np.float32) / np.float32(255)
    expected = (rgb - np.float32(OPENAI_MEAN)) / np.float32(OPENAI_STD)
    np.testing.assert_allclose(px[0, 16, 16], expected, atol=1e-6)
