"""Image preprocessing: PIL images -> uint8 pixels -> normalised float32 NHWC arrays.

The numbers equal open_clip's evaluation transform (torchvision Resize / CenterCrop on PIL
images, then ToTensor and Normalize) exactly, using only Pillow and numpy:

- "shortest": the short side becomes `image_size`, the long side `int(image_size * long / short)`
  (truncated, as torchvision does), then a centre crop whose offset is Python's `round`
  (halves go to the even integer).
- "squash": resize straight to `image_size` x `image_size`; or, with `resize_size`, to that square and then a
  centre crop of `image_size` whose offset is rounded down (HF's EfficientNetImageProcessor, ALIGN's).
- Resizing is Pillow's, done in the image's own mode; conversion to RGB comes after the crop, as in
  open_clip. The order matters: Pillow resizes palette ("P") and "1" images with nearest-neighbour
  whatever filter is asked for, and RGBA with premultiplied alpha.
- `/ 255`, `- mean`, `/ std` are each one float32 operation, so the result is bit-identical.

"naflex" (SigLIP 2's native aspect ratio) keeps each image's shape instead: it is resized so that its
sides are whole patches and as many patches as fit `max_num_patches` (the largest scale HF's
`Siglip2ImageProcessor` finds by its bisection, sides rounded up to whole patches), then cut into a
padded sequence of flattened patches (`NaFlexImages`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
from PIL import Image

from jaxvlm.config_base import Config, check_choice, check_int
from jaxvlm.errors import InputError

if TYPE_CHECKING:
    import jax

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_MODES = ("shortest", "squash", "naflex")
# The raster formats images are read in. Others are refused: Pillow hands EPS files to Ghostscript,
# so an image file or data record that is really PostScript would run a program. (JPEG covers
# MPO, the multi-picture JPEG of phone cameras.)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "JPEG2000", "AVIF")
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _triple(name: str, value: object, positive: bool) -> tuple[float, float, float]:
    try:
        values = tuple(value) if not isinstance(value, (str, bytes)) else ()
    except TypeError:
        values = ()
    if len(values) != 3:
        raise InputError(f"preprocess {name} must be 3 numbers, got {value!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise InputError(f"preprocess {name} must be 3 finite numbers, got {value!r}")
        if positive and v <= 0:
            raise InputError(f"preprocess {name} must be positive, got {value!r}")
        out.append(float(v))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig(Config):
    name: ClassVar[str] = "preprocess config"

    image_size: int  # "naflex": the side of the square image the position grid was learned at
    resize_mode: str = "shortest"  # "shortest" (resize short side, centre crop) | "squash" | "naflex"
    interpolation: str = "bicubic"  # "bicubic" | "bilinear"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    patch_size: int = 16  # "naflex" only: the model's patch side
    max_num_patches: int = 256  # "naflex" only: the patch budget, the length of the patch sequence
    resize_size: int | None = None  # "squash" only: the square side resized to before the centre crop

    def __post_init__(self) -> None:
        check_int("preprocess image_size", self.image_size, 1)
        check_int("preprocess patch_size", self.patch_size, 1)
        check_int("preprocess max_num_patches", self.max_num_patches, 1)
        if self.resize_size is not None:
            check_int("preprocess resize_size", self.resize_size, self.image_size)
        check_choice("preprocess resize_mode", self.resize_mode, RESIZE_MODES)
        check_choice("preprocess interpolation", self.interpolation, tuple(_FILTERS))
        # Normalised so that configs read back from JSON (lists) compare equal to the originals.
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "mean", _triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _triple("std", self.std, positive=True))


class NaFlexImages(NamedTuple):
    """A batch of NaFlex images (numpy or JAX arrays). Each image's patches come first, row by row,
    then zero padding up to the sequence length."""

    patches: Any  # [B, N, patch * patch * 3]: each patch's pixels in (row, column, channel) order
    mask: Any  # bool [B, N]: True for real patches
    grid: Any  # int32 [B, 2]: the image's patch rows and columns (rows * columns <= N)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Opens and fully decodes an image file, in its own mode (preprocess converts to RGB)."""
    path = os.fspath(path)
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            img.load()  # decode now, so a truncated or corrupt file fails here and not later
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise InputError(f"cannot read image {path}: {e.strerror}") from None
    except Exception as e:  # any decoder failure (OSError, SyntaxError, ValueError, bomb check...)
        raise InputError(f"not an image: {path} ({e})") from e
    return img


def _crop_offset(have: int, want: int) -> int:
    if want > have:
        # torchvision pads with zeros (the odd pixel going right / bottom), then crops at 0.
        return -((want - have) // 2)
    return round((have - want) / 2)


def _resize_crop_rgb(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    size = cfg.image_size
    w, h = img.size
    if cfg.resize_mode == "squash":
        target = (cfg.resize_size or size,) * 2
    else:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        target = (size, new_long) if w <= h else (new_long, size)
    if target != (w, h):
        img = img.resize(target, _FILTERS[cfg.interpolation])
    if cfg.resize_mode == "shortest":
        w, h = img.size
        left, top = _crop_offset(w, size), _crop_offset(h, size)
        if (left, top, w, h) != (0, 0, size, size):
            # Pillow fills the part of the box outside the image with zeros, like torchvision's pad.
            img = img.crop((left, top, left + size, top + size))
    elif target[0] != size:
        offset = (target[0] - size) // 2
        img = img.crop((offset, offset, offset + size, offset + size))
    return img.convert("RGB")


def _checked_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    if isinstance(images, Image.Image):
        raise InputError("preprocess expects a sequence of images, got a single image")
    images = list(images)
    if not images:
        raise InputError("preprocess got no images")
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise InputError(f"image {i} is a {type(img).__name__}, not a PIL image")
        if img.width == 0 or img.height == 0:
            raise InputError(f"image {i} is empty ({img.width}x{img.height})")
    return images


def _decoded(i: int, transform, img: Image.Image) -> Image.Image:
    try:
        return transform(img)
    except OSError as e:  # a lazily opened image whose data turns out to be corrupt
        raise InputError(f"image {i} could not be decoded ({e})") from e


def pixels(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray | NaFlexImages:
    """Returns uint8 [N, image_size, image_size, 3], resized and cropped per `cfg` (not normalised);
    for "naflex", `naflex_patches`."""
    if cfg.resize_mode == "naflex":
        return naflex_patches(images, cfg)
    images = _checked_images(images)
    size = cfg.image_size
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(_decoded(i, lambda im: _resize_crop_rgb(im, cfg), img))
    return out


def naflex_size(height: int, width: int, patch_size: int, max_num_patches: int) -> tuple[int, int]:
    """(height, width) in pixels, whole patches, at most ``max_num_patches`` of them, keeping the
    aspect ratio: the largest scale HF's bisection finds (to within 1e-5), each side rounded up to
    whole patches, at least one."""

    def side(scale: float, size: int) -> int:
        return max(patch_size, math.ceil(size * scale / patch_size) * patch_size)

    low, high = 1e-6, 100.0
    while high - low >= 1e-5:
        scale = (low + high) / 2
        if side(scale, height) * side(scale, width) <= max_num_patches * patch_size * patch_size:
            low = scale
        else:
            high = scale
    return side(low, height), side(low, width)


def naflex_patches(images: Sequence[Image.Image], cfg: PreprocessConfig) -> NaFlexImages:
    """uint8 patches [N, max_num_patches, patch * patch * 3] of each image resized per `naflex_size`,
    with the mask of real patches and each image's patch grid (not normalised)."""
    images = _checked_images(images)
    p, length = cfg.patch_size, cfg.max_num_patches
    patches = np.zeros((len(images), length, p * p * 3), np.uint8)
    mask = np.zeros((len(images), length), bool)
    grid = np.zeros((len(images), 2), np.int32)
    for i, img in enumerate(images):
        height, width = naflex_size(img.height, img.width, p, length)

        def resize(im, size=(width, height)):
            return (im if im.size == size else im.resize(size, _FILTERS[cfg.interpolation])).convert("RGB")

        patches[i], mask[i], grid[i] = naflex_example(np.asarray(_decoded(i, resize, img)), p, length)
    return NaFlexImages(patches, mask, grid)


def naflex_example(image: np.ndarray, patch_size: int, length: int) -> NaFlexImages:
    """One image's uint8 pixels [H, W, 3] (sides whole patches) -> its patches [length, p * p * 3] in
    row-major order, zero-padded, with its mask [length] and grid [2] (no batch dimension)."""
    p = patch_size
    rows, cols = image.shape[0] // p, image.shape[1] // p
    patches = np.zeros((length, p * p * 3), image.dtype)
    patches[: rows * cols] = image.reshape(rows, p, cols, p, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
    return NaFlexImages(patches, np.arange(length) < rows * cols, np.array([rows, cols], np.int32))


def normalize(pixels: np.ndarray | jax.Array, cfg: PreprocessConfig) -> np.ndarray | jax.Array:
    """uint8 pixels [..., 3] -> float32 ``(pixels / 255 - mean) / std``, for numpy and JAX arrays alike
    (the train step normalises on the accelerator what the input pipeline sends as uint8)."""
    scaled = pixels.astype(np.float32) / np.float32(255)
    return (scaled - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)


def normalize_images(images: Any, cfg: PreprocessConfig) -> Any:
    """`normalize` for uint8 pixel arrays and for `NaFlexImages` (their real patches); float input is
    taken as normalised already and returned as it is."""
    if isinstance(images, NaFlexImages):
        patches = images.patches
        if patches.dtype == np.uint8:  # padding stays zero, as HF's processor pads
            patches = normalize(patches.reshape(*patches.shape[:-1], -1, 3), cfg).reshape(patches.shape)
            patches = patches * images.mask[..., None]
        return images._replace(patches=patches)
    return normalize(images, cfg) if images.dtype == np.uint8 else images


def preprocess(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray | NaFlexImages:
    """Returns float32 [N, image_size, image_size, 3], resized, cropped and normalised per `cfg`;
    for "naflex", `NaFlexImages` with normalised patches."""
    return normalize_images(pixels(images, cfg), cfg)
