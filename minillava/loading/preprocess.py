"""Image -> pixel_values with Pillow + NumPy, equal to Transformers' PIL-backend CLIP and SigLIP image processors.

The references are `CLIPImageProcessorPil` (llava-1.5; `LlavaImageProcessorPil` for pad-to-square) and
`SiglipImageProcessorPil` (llava-interleave) in Transformers 5.x: `transformers/image_processing_backends.py`
(`PilBackend`), `image_transforms.py`, `models/llava/image_processing_pil_llava.py` and
`models/siglip/image_processing_pil_siglip.py`. Without torchvision, `CLIPImageProcessor`,
`LlavaImageProcessor`, `SiglipImageProcessor` and `AutoImageProcessor` all fall back to these PIL classes.
The steps, in data-flow order:

    image (PIL, any mode)
      └─ to_rgb ──────────────▶ RGB, transparency composited on white      [H, W, 3]   uint8
         └─ pad_to_square ────▶ (do_pad only) mean colour borders          [M, M, 3]   uint8, M = max(H, W)
            └─ resize ────────▶ PIL bicubic on uint8: the shortest edge    [H', W', 3] uint8
                                to S (CLIP), or exactly to (h, w) (SigLIP)
               └─ center_crop ▶ (CLIP only) crop, or zero-pad where the    [Hc, Wc, 3] uint8
                                image is smaller than the crop
                  └─ rescale ─▶ x * 1/255 in float64, then float32         [Hc, Wc, 3] float32
                     └─ normalize ▶ (x - mean) / std in float32            [Hc, Wc, 3] float32
                        └─ channels first, stack ──▶ pixel_values          [N, 3, Hc, Wc] float32

llava-1.5's settings: shortest edge 336, crop 336 x 336, CLIP's mean and std. llava-interleave's (SigLIP
so400m): exactly 384 x 384, no crop, mean = std = 0.5 (pixels to [-1, 1]).

Every step repeats Transformers' arithmetic (same dtypes, same order), so pixel_values are
bit-identical, not merely close. Legend: N images; H, W height and width; M side of the padded square;
S the shortest-edge size; Hc, Wc the crop size (the resize size when there is no crop).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import read_json

# OpenAI CLIP's normalisation constants (Transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# SigLIP's (Transformers' IMAGENET_STANDARD_MEAN / IMAGENET_STANDARD_STD): pixels go to [-1, 1].
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

PREPROCESSOR_CONFIG = "preprocessor_config.json"  # one image processor (4.x and older saves)
PROCESSOR_CONFIG = "processor_config.json"  # the whole processor, image processor nested (5.x saves)


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The image processor's settings. Defaults are CLIPImageProcessor's (Transformers 5.24); llava-1.5 uses
    size=336, crop_size=(336, 336) and keeps the rest. SigLIP's defaults are `SIGLIP_DEFAULTS`."""

    size: int = 224  # shortest edge after resizing (llava-1.5: 336)
    crop_size: tuple[int, int] = (224, 224)  # (height, width)
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    # True: every image through `to_rgb`. None (a json's null, as llava-interleave's): RGB images as they are, every
    # other mode through `to_rgb` (see `image_processor_config_from_dict`). False: RGB images only.
    do_convert_rgb: bool | None = True
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    resample: int = 3  # PIL resample code: 3 = Image.Resampling.BICUBIC
    do_pad: bool = False  # pad to square with the mean colour, as LLaVA-1.5's own code (LlavaImageProcessor's do_pad)
    # Set only when the json gives size as {"height": h, "width": w} (SigLIP's form): then Transformers resizes to
    # exactly (h, w), ignoring the aspect ratio, and `size` holds min(h, w) for information only.
    size_hw: tuple[int, int] | None = None

    @property
    def output_hw(self) -> tuple[int, int] | None:
        """(height, width) of every preprocessed image where the settings fix it: the crop (CLIP), else the exact
        resize (SigLIP); None where it follows the image (a shortest-edge resize without a crop)."""
        if self.do_center_crop:
            return self.crop_size
        if self.do_resize and self.size_hw is not None:
            return self.size_hw
        return None


# SiglipImageProcessor's class defaults (models/siglip/image_processing_pil_siglip.py): 224 x 224 exactly,
# bicubic, no center crop, mean = std = 0.5. llava-interleave's json sets size 384 x 384 and repeats the rest.
SIGLIP_DEFAULTS = ImageProcessorConfig(
    size=224,
    size_hw=(224, 224),
    do_center_crop=False,
    image_mean=SIGLIP_MEAN,
    image_std=SIGLIP_STD,
)


def default_settings(image_processor_type: str) -> ImageProcessorConfig:
    """The class defaults of the image processor a json names, for the fields it leaves out: SigLIP's for
    "SiglipImageProcessor" (and its Pil / Fast twins), else CLIP's (CLIPImageProcessor, LlavaImageProcessor,
    whose defaults are CLIP's, and a json that names no type)."""
    return SIGLIP_DEFAULTS if image_processor_type.startswith("Siglip") else ImageProcessorConfig()


def load_image_processor_config(folder: str | os.PathLike) -> ImageProcessorConfig:
    """Read the image processor settings of a checkpoint folder, as Transformers 5.24 does.

    Priority (`ImageProcessingMixin.get_image_processor_dict` and `AutoImageProcessor`): the "image_processor"
    entry of processor_config.json wins; preprocessor_config.json is read only when processor_config.json is
    absent or has no "image_processor" entry. Fields the json omits take the defaults of the class it names
    (`default_settings`).
    """
    folder = Path(folder)
    settings = None
    processor_file = folder / PROCESSOR_CONFIG
    if processor_file.is_file():
        settings = read_json(processor_file).get("image_processor")
    preprocessor_file = folder / PREPROCESSOR_CONFIG
    if settings is None and preprocessor_file.is_file():
        settings = read_json(preprocessor_file)
    if settings is None:
        raise FileNotFoundError(
            f"{folder}: no image processor settings; expected {PREPROCESSOR_CONFIG} or an 'image_processor' "
            f"entry in {PROCESSOR_CONFIG}"
        )
    return image_processor_config_from_dict(settings)


def image_processor_config_from_dict(settings: dict) -> ImageProcessorConfig:
    """Build the config from the json's image processor dict, filling omitted fields with the defaults of its
    `image_processor_type` (CLIP's or SigLIP's, see `default_settings`).

    `size` may be {"shortest_edge": S}, {"height": h, "width": w} (exact resize, see `size_hw`), an int
    ({"shortest_edge": S}, or a square when the json sets default_to_square) or a [h, w] list.
    `crop_size` may be {"height": h, "width": w}, an int (a square) or a [h, w] list.

    `do_convert_rgb: null` (what llava-interleave's preprocessor_config.json says) is kept as None: RGB images
    are used as they are, and every other PIL mode is converted to RGB (`to_rgb`, transparency composited on
    white). Transformers 5.24 reads the null as "do not convert": it gives the same pixel values for RGB images
    and fails on most other modes (RGBA, L, P, ...: "mean must have N elements"), or reads the bands of YCbCr and
    HSV images as if they were R, G, B; for all those minillava equals Transformers with do_convert_rgb=True.
    An explicit false is kept (non-RGB images are then refused).
    """
    kind = str(settings.get("image_processor_type") or "")
    default = default_settings(kind)
    size, size_hw = _parse_size(settings.get("size"), default, bool(settings.get("default_to_square", False)))
    convert_rgb = settings.get("do_convert_rgb", default.do_convert_rgb)  # a null stays None
    return ImageProcessorConfig(
        size=size,
        crop_size=_parse_crop_size(settings.get("crop_size"), default.crop_size),
        do_resize=bool(settings.get("do_resize", default.do_resize)),
        do_center_crop=bool(settings.get("do_center_crop", default.do_center_crop)),
        do_rescale=bool(settings.get("do_rescale", default.do_rescale)),
        do_normalize=bool(settings.get("do_normalize", default.do_normalize)),
        do_convert_rgb=None if convert_rgb is None else bool(convert_rgb),
        rescale_factor=float(settings.get("rescale_factor", default.rescale_factor)),
        image_mean=_three_floats(settings.get("image_mean", default.image_mean), "image_mean"),
        image_std=_three_floats(settings.get("image_std", default.image_std), "image_std"),
        resample=int(settings.get("resample", default.resample)),
        # do_pad is pad-to-square only in LlavaImageProcessor. CLIPImageProcessor's do_pad pads a batch to its
        # largest image (bottom/right), a no-op once every image is center-cropped (CLIP) or resized (SigLIP) to
        # one size: ignored here.
        do_pad=bool(settings.get("do_pad") or False) and not kind.startswith(("CLIP", "Siglip")),
        size_hw=size_hw,
    )


def _parse_size(value, default: ImageProcessorConfig, default_to_square: bool) -> tuple[int, tuple[int, int] | None]:
    """-> (shortest edge, exact (height, width) or None), following Transformers' get_size_dict."""
    if value is None:
        return default.size, default.size_hw
    if isinstance(value, int):
        return (value, (value, value)) if default_to_square else (value, None)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    if isinstance(value, dict) and set(value) == {"shortest_edge"}:
        return int(value["shortest_edge"]), None
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        height, width = int(value["height"]), int(value["width"])
        return min(height, width), (height, width)
    raise ValueError(f"image processor 'size' must be {{'shortest_edge': S}} or {{'height', 'width'}}; got {value!r}")


def _parse_crop_size(value, default: tuple[int, int]) -> tuple[int, int]:
    if value is None:
        return default
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        return (int(value["height"]), int(value["width"]))
    raise ValueError(f"image processor 'crop_size' must be {{'height': h, 'width': w}}; got {value!r}")


def _three_floats(value, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):  # one number for all channels, as Transformers' normalize accepts
        return (float(value),) * 3
    if len(value) != 3:
        raise ValueError(f"image processor '{name}' needs 3 values (R, G, B); got {value!r}")
    return tuple(float(v) for v in value)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """Open an image file, or check an already-open PIL image.

    A path is loaded the way Transformers' `image_utils.load_image` loads one (the processor does this for str
    inputs): EXIF orientation is applied (`ImageOps.exif_transpose`) and the image is converted with
    `convert("RGB")`, which drops an alpha channel without compositing it.

    A PIL image is returned unchanged: Transformers' image processors apply neither EXIF orientation nor
    `load_image` to PIL inputs, so a photo opened with `Image.open` keeps its stored (unrotated) pixels there,
    and must here too for pixel_values to be equal. Call `ImageOps.exif_transpose` yourself if you want it.

    Only local files: no URLs or base64 strings (Transformers accepts those).
    """
    if isinstance(source, Image.Image):
        _check_not_empty(source, "image")
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_image takes a path or a PIL image, got {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")  # decodes the whole file
    except UnidentifiedImageError as e:
        raise ValueError(f"{path}: not an image Pillow can read") from e
    except (OSError, SyntaxError) as e:  # truncated or corrupt data surfaces while decoding
        raise ValueError(f"{path}: cannot decode image ({e})") from e
    _check_not_empty(image, str(path))
    return image


def _check_not_empty(image: Image.Image, name: str) -> None:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name}: zero-sized image ({image.width}x{image.height})")


# ---------------------------------------------------------------------------------------------------------------
# The steps, in data-flow order
# ---------------------------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, as Transformers' `image_transforms.convert_to_rgb` does it.

    An image with transparency (an "A" band: RGBA, LA, PA; or a "transparency" entry in `image.info`: P, L or
    RGB with a transparent colour) goes to RGBA and is alpha-composited onto opaque white. Every other mode
    (L, 1, CMYK, YCbCr, I;16, I, F, RGBa, ...) takes Pillow's own `convert("RGB")`.

    EXIF orientation is ignored, as in Transformers' processors for PIL inputs (see `load_image`).

    Used for every image processor, SigLIP's too: llava-interleave's json says `do_convert_rgb: null`, with which
    Transformers converts nothing and refuses most non-RGB images; minillava converts them as Transformers does
    with do_convert_rgb=True (see `image_processor_config_from_dict`).
    """
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")  # [H, W, 3]
    rgba = image.convert("RGBA")  # [H, W, 4]
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # [H, W, 4]
    return Image.alpha_composite(white, rgba).convert("RGB")  # [H, W, 3]


def pad_to_square(image: Image.Image, image_mean: Sequence[float]) -> Image.Image:
    """LLaVA-1.5's own `expand2square` (`--image_aspect_ratio pad`): centre the image on a square of the mean
    colour (LlavaImageProcessor with do_pad=True). The colour is int(mean * 255) per channel (truncated); the
    offset is floored."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    colour = tuple(int(m * 255) for m in image_mean)
    square = Image.new("RGB", (side, side), colour)  # [M, M, 3]
    square.paste(image, ((side - width) // 2, (side - height) // 2))  # [M, M, 3]
    return square


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side = size and the longer side = int(size * long / short), truncated
    (Transformers' `get_resize_output_image_size` with default_to_square=False). Square images become square."""
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def resize(image: Image.Image, hw: tuple[int, int], resample: int) -> Image.Image:
    """PIL resize of the uint8 RGB image to (height, width) = hw."""
    height, width = hw
    return image.resize((width, height), resample=resample)  # [H', W', 3]


def center_crop(pixels: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
    """[H, W, C] -> [Hc, Wc, C], top = (H - Hc) // 2, left = (W - Wc) // 2.

    Where the image is smaller than the crop along an axis, Transformers' `image_transforms.center_crop` pads it
    with zeros (black, before rescale/normalize) and centres it at offset ceil((Hc - H) / 2)."""
    out = np.zeros((crop_hw[0], crop_hw[1], pixels.shape[2]), dtype=pixels.dtype)  # [Hc, Wc, C]
    src_y, dst_y, h = _crop_or_pad(pixels.shape[0], crop_hw[0])
    src_x, dst_x, w = _crop_or_pad(pixels.shape[1], crop_hw[1])
    out[dst_y : dst_y + h, dst_x : dst_x + w] = pixels[src_y : src_y + h, src_x : src_x + w]
    return out


def _crop_or_pad(n: int, c: int) -> tuple[int, int, int]:
    """Along one axis of length n, cropped to c: (start in the source, start in the output, length copied)."""
    if n >= c:
        return (n - c) // 2, 0, c  # crop
    return 0, (c - n + 1) // 2, n  # pad: ceil((c - n) / 2) zeros before


def rescale(pixels: np.ndarray, factor: float) -> np.ndarray:
    """[H, W, C] uint8 -> float32, multiplied in float64 and then cast (Transformers' `rescale`)."""
    return (pixels.astype(np.float64) * factor).astype(np.float32)


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(x - mean) / std per channel, in float32 with float32 mean/std (Transformers' `normalize`)."""
    x = x.astype(np.float32, copy=False)  # uint8 when do_rescale is off
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # [H, W, C]


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------


def preprocess_one(image: Image.Image, config: ImageProcessorConfig) -> np.ndarray:
    """One PIL image -> [3, Hc, Wc] float32 (or [3, H', W'] without center crop)."""
    _check_not_empty(image, "image")
    if config.do_convert_rgb or (config.do_convert_rgb is None and image.mode != "RGB"):
        image = to_rgb(image)  # [H, W, 3]
    elif image.mode != "RGB":
        raise ValueError(f"image mode {image.mode!r} with do_convert_rgb=False: minillava needs RGB input")
    if config.do_pad:
        image = pad_to_square(image, config.image_mean)  # [M, M, 3]
    if config.do_resize:
        hw = config.size_hw or shortest_edge_size(image.height, image.width, config.size)
        image = resize(image, hw, config.resample)  # [H', W', 3]
    pixels = np.asarray(image)  # [H', W', 3] uint8
    if config.do_center_crop:
        pixels = center_crop(pixels, config.crop_size)  # [Hc, Wc, 3] uint8
    if config.do_rescale:
        pixels = rescale(pixels, config.rescale_factor)  # [Hc, Wc, 3] float32
    if config.do_normalize:
        pixels = normalize(pixels, config.image_mean, config.image_std)  # [Hc, Wc, 3] float32
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)  # [3, Hc, Wc]


def preprocess(images, config: ImageProcessorConfig) -> np.ndarray:
    """A PIL image, a path, or a list of them -> pixel_values [N, 3, Hc, Wc] float32.

    Paths go through `load_image` (EXIF applied, as Transformers does for paths); PIL images are used as given.
    With do_rescale and do_normalize both off, the values are the uint8 pixels as float32.
    """
    if isinstance(images, (Image.Image, str, os.PathLike)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("preprocess needs at least one image")
    for image in images:
        if not isinstance(image, (Image.Image, str, os.PathLike)):
            raise TypeError(f"preprocess takes PIL images or paths, got {type(image).__name__}")
    batch = [preprocess_one(load_image(image), config) for image in images]  # N x [3, Hc, Wc]
    shapes = {b.shape for b in batch}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes after preprocessing cannot be stacked: {sorted(shapes)}")
    return np.stack(batch)  # [N, 3, Hc, Wc]
