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

import io
import math
import numbers
import os
import reprlib
import stat
import warnings
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

# The most pixels an image may have at any step of preprocessing: as decoded, padded to a square (do_pad) and resized.
# The resize needs the bound as much as the file does: a shortest-edge resize of a thin image is long, so a 1 KB PNG of
# 1 x 1,000,000 pixels resized to a shortest edge of 336 would be 336 x 336,000,000 pixels (339 GB of uint8). The
# number is Pillow's default decompression-bomb limit (Image.MAX_IMAGE_PIXELS = 2**30 // 4 // 3, 256 MiB as 8-bit
# RGB), past which Pillow warns about a file: photographs of up to 89 megapixels (12,000 x 7,400) pass, and one image
# at the bound costs a few GB on its way through (an uncropped resize is rescaled in float64, 24 bytes a pixel).
MAX_IMAGE_PIXELS = 89_478_485
# Image URLs (Transformers' load_image fetches these two schemes): how long to wait for an answer, and the most bytes
# read, a bound like MAX_IMAGE_PIXELS's (a PNG of MAX_IMAGE_PIXELS is at most ~256 MB, a photograph a few MB).
URL_SCHEMES = ("http://", "https://")
URL_TIMEOUT_S = 30
MAX_DOWNLOAD_BYTES = 256 * 2**20
# The codes of PIL's resampling filters (Image.Resampling): 0 nearest, 1 Lanczos, 2 bilinear, 3 bicubic, 4 box,
# 5 Hamming, and in newer Pillows more.
RESAMPLE_CODES = tuple(sorted(int(code) for code in Image.Resampling))


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def _is_finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _is_pixels(n) -> bool:
    """A positive whole number (JSON's true is a Python int too, but no size)."""
    return isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0


def _check_hw(hw, name: str) -> None:
    """A (height, width) setting: two positive ints whose area is within MAX_IMAGE_PIXELS."""
    sides_ok = isinstance(hw, (tuple, list)) and len(hw) == 2 and all(map(_is_pixels, hw))
    _require(sides_ok, name, hw, "two positive whole numbers of pixels (height, width)")
    if hw[0] * hw[1] > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"image processor setting {name!r} of {hw[0]} x {hw[1]} pixels is over minillava's bound of "
            f"{MAX_IMAGE_PIXELS:,} pixels an image"
        )


def _require(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"image processor setting {name!r} must be {expected}; got {reprlib.repr(value)}")


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

    def __post_init__(self):
        """Check every setting once, where it enters: from a json (`image_processor_config_from_dict`, which names
        the file) or from code. Sizes are bounded so that no setting alone makes preprocessing unbounded."""
        for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_pad"):
            _require(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")
        convert = self.do_convert_rgb
        _require(convert is None or isinstance(convert, bool), "do_convert_rgb", convert, "true, false or null")
        _require(_is_pixels(self.size), "size", self.size, "a positive whole number of pixels")
        _check_hw((self.size, self.size), "size")  # the shortest edge: the resized image is at least size x size
        _check_hw(self.crop_size, "crop_size")
        if self.size_hw is not None:
            _check_hw(self.size_hw, "size")
        _require(_is_finite_number(self.rescale_factor) and self.rescale_factor > 0, "rescale_factor",
                 self.rescale_factor, "a finite number > 0")  # fmt: skip
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            numbers_ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(map(_is_finite_number, value))
            _require(numbers_ok, name, value, "3 finite numbers (R, G, B)")
        # std divides: zero would make inf pixels, a negative value would flip them
        _require(all(s > 0 for s in self.image_std), "image_std", self.image_std, "3 numbers > 0")
        resample_ok = isinstance(self.resample, numbers.Integral) and not isinstance(self.resample, bool)
        _require(resample_ok and self.resample in RESAMPLE_CODES, "resample", self.resample,
                 f"a PIL resampling filter code {RESAMPLE_CODES} (3 is bicubic)")  # fmt: skip


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
        settings, source = read_json(processor_file).get("image_processor"), f"{processor_file} ('image_processor')"
    preprocessor_file = folder / PREPROCESSOR_CONFIG
    if settings is None and preprocessor_file.is_file():
        settings, source = read_json(preprocessor_file), str(preprocessor_file)
    if settings is None:
        raise FileNotFoundError(
            f"{folder}: no image processor settings; expected {PREPROCESSOR_CONFIG} or an 'image_processor' "
            f"entry in {PROCESSOR_CONFIG}"
        )
    return image_processor_config_from_dict(settings, source)


def image_processor_config_from_dict(settings: dict, source: str = "image processor settings") -> ImageProcessorConfig:
    """Build the config from the json's image processor dict, filling omitted fields with the defaults of its
    `image_processor_type` (CLIP's or SigLIP's, see `default_settings`). A bad value is a ValueError that names
    ``source`` (the file it came from), the field and what was expected.

    `size` may be {"shortest_edge": S}, {"height": h, "width": w} (exact resize, see `size_hw`), an int
    ({"shortest_edge": S}, or a square when the json sets default_to_square) or a [h, w] list.
    `crop_size` may be {"height": h, "width": w}, an int (a square) or a [h, w] list.
    A null flag (do_resize, do_center_crop, ...) is off, as Transformers reads it.

    `do_convert_rgb: null` (what llava-interleave's preprocessor_config.json says) is kept as None: RGB images
    are used as they are, and every other PIL mode is converted to RGB (`to_rgb`, transparency composited on
    white). Transformers 5.24 reads the null as "do not convert": it gives the same pixel values for RGB images
    and fails on most other modes (RGBA, L, P, ...: "mean must have N elements"), or reads the bands of YCbCr and
    HSV images as if they were R, G, B; for all those minillava equals Transformers with do_convert_rgb=True.
    An explicit false is kept (non-RGB images are then refused).
    """
    if not isinstance(settings, dict):
        raise ValueError(f"{source}: the image processor settings must be a JSON object, got {type(settings).__name__}")
    try:
        kind = settings.get("image_processor_type")
        kind = "" if kind is None else kind
        _require(isinstance(kind, str), "image_processor_type", kind, "a class name such as 'CLIPImageProcessor'")
        default = default_settings(kind)
        to_square = _flag(settings, "default_to_square", False)
        _require(isinstance(to_square, bool), "default_to_square", to_square, "true or false")
        size, size_hw = _parse_size(settings.get("size"), default, to_square)
        do_pad = _flag(settings, "do_pad", False)
        if kind.startswith(("CLIP", "Siglip")) and isinstance(do_pad, bool):
            # do_pad is pad-to-square only in LlavaImageProcessor. CLIPImageProcessor's do_pad pads a batch to its
            # largest image (bottom/right), a no-op once every image is center-cropped (CLIP) or resized (SigLIP)
            # to one size: ignored here.
            do_pad = False
        return ImageProcessorConfig(
            size=size,
            crop_size=_parse_crop_size(settings.get("crop_size"), default.crop_size),
            do_resize=_flag(settings, "do_resize", default.do_resize),
            do_center_crop=_flag(settings, "do_center_crop", default.do_center_crop),
            do_rescale=_flag(settings, "do_rescale", default.do_rescale),
            do_normalize=_flag(settings, "do_normalize", default.do_normalize),
            do_convert_rgb=settings.get("do_convert_rgb", default.do_convert_rgb),  # a null stays None
            rescale_factor=settings.get("rescale_factor", default.rescale_factor),
            image_mean=_three_values(settings.get("image_mean", default.image_mean)),
            image_std=_three_values(settings.get("image_std", default.image_std)),
            resample=settings.get("resample", default.resample),
            do_pad=do_pad,
            size_hw=size_hw,
        )
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def _flag(settings: dict, name: str, default: bool):
    """A true/false field; null is off (Transformers' processors test it for truth). Any other value is returned as
    it is, for `ImageProcessorConfig` to refuse."""
    value = settings.get(name, default)
    return False if value is None else value


def _parse_size(value, default: ImageProcessorConfig, default_to_square: bool) -> tuple[int, tuple[int, int] | None]:
    """-> (shortest edge, exact (height, width) or None), following Transformers' get_size_dict."""
    if value is None:
        return default.size, default.size_hw
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, (value, value)) if default_to_square else (value, None)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    if isinstance(value, dict) and set(value) == {"shortest_edge"}:
        return value["shortest_edge"], None
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        size_hw = (value["height"], value["width"])
        _check_hw(size_hw, "size")  # before min() compares them
        return min(size_hw), size_hw
    raise ValueError(
        f"image processor setting 'size' must be {{'shortest_edge': S}} or {{'height': h, 'width': w}}; "
        f"got {reprlib.repr(value)}"
    )


def _parse_crop_size(value, default: tuple[int, int]) -> tuple[int, int]:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (value[0], value[1])
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        return (value["height"], value["width"])
    raise ValueError(
        f"image processor setting 'crop_size' must be {{'height': h, 'width': w}}; got {reprlib.repr(value)}"
    )


def _three_values(value):
    """One number for all channels (as Transformers' normalize accepts) -> three; a list -> a tuple."""
    if _is_finite_number(value):
        return (value,) * 3
    return tuple(value) if isinstance(value, (list, tuple)) else value


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

    An http:// or https:// URL is fetched (``fetch_url``) and decoded as a file is: Transformers' `load_image`
    takes URLs too.

    Either is refused with a ValueError when it has no pixels or more than MAX_IMAGE_PIXELS; a file before it is
    decoded (its header gives the size), and whatever Pillow cannot decode is a ValueError naming the file.
    Local regular files and URLs: no base64 strings (Transformers accepts those), no FIFOs or devices.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, "image")
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_image takes a path, a URL or a PIL image, got {type(source).__name__}")
    if isinstance(source, str) and source.startswith(URL_SCHEMES):
        return _decode(io.BytesIO(fetch_url(source)), source)
    path = Path(source)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    except ValueError:  # a NUL or a lone surrogate in the name (UnicodeEncodeError): no file is called that
        raise ValueError(f"{str(path)!r}: not a possible file name (it holds a NUL or a lone surrogate)") from None
    except OSError as err:  # a name too long, a loop of links, a folder we may not enter, ...
        raise ValueError(f"{path}: cannot read the image file ({err.strerror})") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(mode):  # opening a FIFO would wait for a writer forever; a device may never end
        raise ValueError(f"{path}: not a regular file (a FIFO, socket or device), so not an image file")
    return _decode(path, str(path))


def _decode(file: Path | io.BytesIO, name: str) -> Image.Image:
    """Decode an image file (a path, or the bytes fetched from a URL) into an RGB image, EXIF orientation applied;
    `name` (the path or URL) is named in its errors."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about a file of more than Image.MAX_IMAGE_PIXELS pixels and refuses one of twice that
            # (a possible decompression bomb); both become our error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                width, height = opened.size  # from the header
                if 0 < width * height <= MAX_IMAGE_PIXELS:  # only an image within the bound is decoded
                    image = ImageOps.exif_transpose(opened).convert("RGB")  # decodes the whole file
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{name}: too many pixels, refused as a possible decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image Pillow can read") from None
    except PermissionError as err:
        raise ValueError(f"{name}: cannot read the image file ({err.strerror})") from None
    except Exception as err:  # corrupt data surfaces while decoding, as whatever Pillow's plugin for the format
        # raises: OSError for a truncated file, struct.error or TypeError for a broken EXIF block, SyntaxError, ...
        raise ValueError(f"{name}: cannot decode image ({err or type(err).__name__})") from None
    _check_pixels(width, height, name)  # the error for an image not decoded above
    return image


def fetch_url(url: str) -> bytes:
    """The bytes at an http:// or https:// URL, read with the standard library (urllib), as Transformers'
    `load_image` fetches an image URL (with httpx). Only where this machine can reach the URL: no network, an
    unknown host, a refused connection or a timeout (URL_TIMEOUT_S) is a ConnectionError naming the URL and what
    to give instead; an error status from the server, or more than MAX_DOWNLOAD_BYTES, a ValueError."""
    import urllib.error  # (imported here: only a URL needs them)
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)  # one byte more than allowed tells a file that is too big
    except urllib.error.HTTPError as err:  # the server answered, with an error status (an OSError too: caught first)
        raise ValueError(f"{url}: the server answered HTTP {err.code} ({err.reason}), not an image") from None
    except (urllib.error.URLError, OSError) as err:  # no answer at all
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise ConnectionError(
            f"{url}: cannot fetch the image ({reason}); minillava fetches image URLs only where this machine can "
            "reach them: download the picture and give its path or a PIL image instead"
        ) from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes, too large for an image file")
    return data


def _check_pixels(width: int, height: int, name: str) -> None:
    """An image must have pixels, and not more than MAX_IMAGE_PIXELS of them."""
    if width == 0 or height == 0:
        raise ValueError(f"{name}: zero-sized image ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{name}: {width}x{height} is {width * height:,} pixels, over minillava's bound of "
            f"{MAX_IMAGE_PIXELS:,} pixels an image"
        )


def check_image_size(image: Image.Image, config: ImageProcessorConfig, name: str = "image") -> None:
    """Refuse, before any work, an image that some step of `preprocess_one` would make larger than
    MAX_IMAGE_PIXELS: the image itself, its square (do_pad) or its resize target (a thin image's shortest-edge
    resize is long: see MAX_IMAGE_PIXELS)."""
    _check_pixels(image.width, image.height, name)
    height, width = image.height, image.width
    if config.do_pad:
        height = width = max(height, width)
        _check_pixels(width, height, f"{name} padded to a square")
    if config.do_resize and config.size_hw is None:  # an exact resize is bounded by the config's own check
        height, width = shortest_edge_size(height, width, config.size)
        _check_pixels(width, height, f"{name} resized to a shortest edge of {config.size}")


# ---------------------------------------------------------------------------------------------------------------
# The steps, in data-flow order
# ---------------------------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, as Transformers' `image_transforms.convert_to_rgb` does it.

    An image with transparency (an "A" band: RGBA, LA, PA; or a "transparency" entry in `image.info`: P, L or
    RGB with a transparent colour) goes to RGBA and is alpha-composited onto opaque white. Every other mode
    (L, 1, CMYK, YCbCr, I;16, I, F, RGBa, ...) takes Pillow's own `convert("RGB")`. "La" (L with premultiplied
    alpha), which Pillow converts only to LA and Transformers therefore not at all, goes through LA.
    An image Pillow cannot convert (a "transparency" entry that does not fit its mode) is a ValueError naming the
    mode.

    EXIF orientation is ignored, as in Transformers' processors for PIL inputs (see `load_image`).

    Used for every image processor, SigLIP's too: llava-interleave's json says `do_convert_rgb: null`, with which
    Transformers converts nothing and refuses most non-RGB images; minillava converts them as Transformers does
    with do_convert_rgb=True (see `image_processor_config_from_dict`).
    """
    if image.mode == "La":
        image = image.convert("LA")  # [H, W, 2], alpha no longer premultiplied
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    try:
        if not has_alpha:
            return image.convert("RGB")  # [H, W, 3]
        rgba = image.convert("RGBA")  # [H, W, 4]
    except (ValueError, TypeError, OverflowError) as err:  # Pillow's words for a mode or transparency it cannot use
        transparency = image.info.get("transparency")
        what = "" if transparency is None else f" with transparency {reprlib.repr(transparency)}"
        raise ValueError(f"image mode {image.mode!r}{what}: Pillow cannot convert it to RGB ({err})") from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # [H, W, 4]
    return Image.alpha_composite(white, rgba).convert("RGB")  # [H, W, 3]


def pad_to_square(image: Image.Image, image_mean: Sequence[float]) -> Image.Image:
    """LLaVA-1.5's own `expand2square` (`--image_aspect_ratio pad`): centre the image on a square of the mean
    colour (LlavaImageProcessor with do_pad=True). The colour is int(mean * 255) per channel (truncated, and
    clipped to 0 .. 255); the offset is floored."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    # Pillow clips a colour to 0..255 itself but overflows past 64 bits (a mean of 1e30): clipped here, same colours
    colour = tuple(min(max(int(m * 255), 0), 255) for m in image_mean)
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
    """One PIL image -> [3, Hc, Wc] float32 (or [3, H', W'] without center crop). Its size must have passed
    `check_image_size` (as `preprocess` checks every image first)."""
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

    Paths and URLs go through `load_image` (EXIF applied, as Transformers does for them); PIL images are used as given.
    Every image is loaded and its size checked (`check_image_size`) before any is preprocessed.
    With do_rescale and do_normalize both off, the values are the uint8 pixels as float32.
    """
    if isinstance(images, (Image.Image, str, os.PathLike)):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"preprocess takes a PIL image, a path or a list of them, got {type(images).__name__}")
    if not images:
        raise ValueError("preprocess needs at least one image")
    for image in images:
        if not isinstance(image, (Image.Image, str, os.PathLike)):
            raise TypeError(f"preprocess takes PIL images or paths, got {type(image).__name__}")
    loaded = [load_image(image) for image in images]  # N PIL images
    for i, (image, given) in enumerate(zip(loaded, images, strict=True)):
        check_image_size(image, config, str(given) if isinstance(given, (str, os.PathLike)) else f"image {i}")
    batch = [preprocess_one(image, config) for image in loaded]  # N x [3, Hc, Wc]
    shapes = {b.shape for b in batch}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes after preprocessing cannot be stacked: {sorted(shapes)}")
    return np.stack(batch)  # [N, 3, Hc, Wc]
