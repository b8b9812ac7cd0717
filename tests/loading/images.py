"""The pictures and references the image-processing tests share: scikit-image's photographs in any size and PIL
mode, PNG files whose header claims any size, Transformers' PIL-backend processors, and the check that two
pixel_values are bit-identical."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from minillava.loading.preprocess import image_processor_config_from_dict

from ..tools import load_tool

# A small PNG whose header claims any size (a decompression bomb, a thin image): the fuzzer's maker of them.
png_with_size = load_tool("fuzz").png_with_size

# Every step repeats Transformers' arithmetic in the same dtypes, so we ask for bit-identical pixel_values, not
# just <= 1e-6: a float32 instead of float64 rescale differs by one float32 ulp (~2e-7 after normalising), which
# a 1e-6 tolerance would hide.

LLAVA = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}  # llava-1.5-7b-hf
DEFAULT = {}  # CLIPImageProcessor's defaults: 224, CLIP mean/std
SETTINGS = {"llava-336": LLAVA, "default-224": DEFAULT}

# llava-hf/llava-interleave-qwen-0.5b-hf's published files (tests/data): its preprocessor_config.json is SigLIP
# so400m's (exactly 384 x 384, bicubic, no crop, mean = std = 0.5, "do_convert_rgb": null); and the same at the tiny
# test model's 30 px.
INTERLEAVE_FOLDER = Path(__file__).resolve().parents[1] / "data" / "llava-interleave-qwen-0.5b-hf"
INTERLEAVE = json.loads((INTERLEAVE_FOLDER / "preprocessor_config.json").read_text())
INTERLEAVE_TINY = {**INTERLEAVE, "size": {"height": 30, "width": 30}}
SIGLIP_SETTINGS = {"interleave-384": INTERLEAVE, "tiny-30": INTERLEAVE_TINY}

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera"]  # camera is grayscale (mode L)
SIZES = [  # (width, height)
    (1, 1),
    (2, 3),
    (13, 7),
    (3, 200),
    (100, 50),
    (223, 224),
    (335, 337),
    (336, 336),
    (451, 300),
    (480, 640),
    (640, 480),
    (1024, 1024),
    (3000, 2000),
    (1500, 3000),
]


def reference(hf, images, settings, llava=False):
    """pixel_values from Transformers' PIL-backend processor, as a NumPy array."""
    cls = hf.LlavaImageProcessorPil if llava else hf.CLIPImageProcessorPil
    return cls(**settings)(images, return_tensors="np")["pixel_values"]


def siglip_reference(hf, images, settings, convert_rgb=False):
    """pixel_values from Transformers' SiglipImageProcessorPil with a preprocessor_config.json's settings. With the
    published "do_convert_rgb": null it converts nothing (and fails on non-RGB images); ``convert_rgb`` passes
    do_convert_rgb=True, which minillava always does."""
    settings = {k: v for k, v in settings.items() if k not in ("image_processor_type", "processor_class")}
    if convert_rgb:
        settings["do_convert_rgb"] = True
    return hf.SiglipImageProcessorPil(**settings)(images, return_tensors="np")["pixel_values"]


def ours(settings, **extra):
    return image_processor_config_from_dict({**settings, **extra})


def assert_same(a, b):
    assert a.dtype == b.dtype == np.float32
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)


_photo_cache = {}


def photo(name):
    if name not in _photo_cache:
        _photo_cache[name] = Image.fromarray(getattr(data, name)())
    return _photo_cache[name]


def photo_at(name, size):
    """A real photograph resized (bicubic) to size = (width, height)."""
    return photo(name).resize(size, Image.Resampling.BICUBIC)


def in_mode(mode):
    """The astronaut (odd-sized, 301x217) in a PIL mode, with varying content in every band."""
    rgb = photo_at("astronaut", (301, 217))
    pixels = np.asarray(rgb)
    yy, xx = np.mgrid[0:217, 0:301]
    alpha = ((xx * 255) // 300).astype(np.uint8)  # 0 (transparent) on the left to 255 on the right
    if mode == "RGB":
        return rgb
    if mode == "RGBA":
        return Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    if mode == "LA":
        return Image.fromarray(np.dstack([np.asarray(rgb.convert("L")), alpha]), "LA")
    if mode == "PA":
        return Image.fromarray(np.dstack([np.asarray(rgb.convert("RGB")), alpha]), "RGBA").convert("PA")
    if mode == "RGBa":
        return Image.fromarray(np.dstack([pixels, alpha]), "RGBA").convert("RGBa")
    if mode == "P":
        return rgb.quantize(64)
    if mode == "P+transparency":
        image = rgb.quantize(64)
        image.info["transparency"] = int(np.asarray(image)[100, 150])  # one palette entry made transparent
        return image
    if mode == "L+transparency":
        image = rgb.convert("L")
        image.info["transparency"] = int(np.asarray(image)[100, 150])
        return image
    if mode == "RGB+transparency":
        image = rgb.copy()
        image.info["transparency"] = tuple(int(v) for v in pixels[100, 150])
        return image
    if mode == "I;16":
        return Image.fromarray((yy * 300 + xx).astype(np.uint16))  # 0 .. 65_100: the full 16-bit range
    if mode == "I":
        return Image.fromarray((np.asarray(rgb.convert("L")).astype(np.int32) - 60) * 3)  # -180 .. 585
    if mode == "F":
        return Image.fromarray(np.asarray(rgb.convert("L")).astype(np.float32) * 1.3 - 20.5)
    return rgb.convert(mode)  # L, 1, CMYK, YCbCr, HSV


MODES = [
    "RGB",
    "RGBA",
    "LA",
    "PA",
    "RGBa",
    "L",
    "P",
    "P+transparency",
    "L+transparency",
    "RGB+transparency",
    "CMYK",
    "YCbCr",
    "HSV",
    "I;16",
    "I",
    "F",
    "1",
]
