"""minillava.preprocess against Transformers' PIL-backend image processors (CLIPImageProcessorPil and
LlavaImageProcessorPil, which CLIPImageProcessor / LlavaImageProcessor / AutoImageProcessor fall back to
without torchvision), on real photographs from scikit-image in every size, aspect and PIL mode."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from minillava.loading.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    ImageProcessorConfig,
    image_processor_config_from_dict,
    load_image,
    load_image_processor_config,
    preprocess,
    shortest_edge_size,
    to_rgb,
)

# Every step repeats Transformers' arithmetic in the same dtypes, so we ask for bit-identical pixel_values, not
# just <= 1e-6: a float32 instead of float64 rescale differs by one float32 ulp (~2e-7 after normalising), which
# a 1e-6 tolerance would hide.

LLAVA = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}  # llava-1.5-7b-hf
DEFAULT = {}  # CLIPImageProcessor's defaults: 224, CLIP mean/std
SETTINGS = {"llava-336": LLAVA, "default-224": DEFAULT}

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


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf():
    """The Transformers PIL-backend classes (imported once; they are slow to import)."""
    import transformers

    return transformers


def reference(hf, images, settings, llava=False):
    """pixel_values from Transformers' PIL-backend processor, as a NumPy array."""
    cls = hf.LlavaImageProcessorPil if llava else hf.CLIPImageProcessorPil
    return cls(**settings)(images, return_tensors="np")["pixel_values"]


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


# --------------------------------------------------------------------------------------------------------------
# photographs in many sizes and aspect ratios
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", PHOTOS)
def test_photo_sizes(hf, name, size, setting):
    image = photo_at(name, size)
    settings = SETTINGS[setting]
    assert_same(preprocess([image], ours(settings)), reference(hf, [image], settings))


def test_batch_of_mixed_sizes_and_modes(hf):
    images = [photo_at("coffee", (640, 480)), photo_at("camera", (7, 13)), in_mode("RGBA"), in_mode("P")]
    got = preprocess(images, ours(LLAVA))
    assert got.shape == (4, 3, 336, 336)
    assert_same(got, reference(hf, images, LLAVA))


def test_single_image_not_in_a_list(hf):
    image = photo("chelsea")
    assert_same(preprocess(image, ours(LLAVA)), reference(hf, image, LLAVA))


@pytest.mark.parametrize(
    "settings",
    [
        {"size": {"shortest_edge": 200}, "crop_size": {"height": 336, "width": 250}},  # crop larger than the image
        {"size": {"height": 300, "width": 200}, "crop_size": {"height": 256, "width": 256}},  # exact resize
        {"do_resize": False, "crop_size": {"height": 300, "width": 280}},  # crop only: pads small images
        {"do_rescale": False},
        {"do_normalize": False},
        {"resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 127.5},
    ],
    ids=["small-for-crop", "height-width", "no-resize", "no-rescale", "no-normalize", "bilinear-half"],
)
@pytest.mark.parametrize("size", [(640, 480), (13, 7), (2, 3), (250, 400)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_other_settings(hf, settings, size):
    image = photo_at("rocket", size)
    got = preprocess([image], ours(settings))
    want = reference(hf, [image], settings).astype(np.float32)  # uint8 when do_rescale and do_normalize are off
    assert_same(got, want)


def test_small_images_are_zero_padded_by_center_crop(hf):
    """An image smaller than the crop is centred on black (0 before normalisation), offset ceil((c - n) / 2)."""
    image = photo_at("astronaut", (5, 8))
    config = ImageProcessorConfig(do_resize=False, crop_size=(10, 10), do_rescale=False, do_normalize=False)
    got = preprocess(image, config)[0]  # [3, 10, 10]
    assert (got[:, 1:9, 3:8] == np.asarray(image, np.float32).transpose(2, 0, 1)).all()
    assert got[:, 0].sum() == got[:, 9].sum() == got[:, :, :3].sum() == got[:, :, 8:].sum() == 0


@pytest.mark.parametrize(
    "hw, size, want",
    [
        ((480, 640), 336, (336, 448)),
        ((640, 480), 336, (448, 336)),
        ((7, 13), 336, (336, 624)),
        ((3, 2), 224, (336, 224)),
    ],
)
def test_shortest_edge_size_floors_the_long_side(hw, size, want):
    assert shortest_edge_size(*hw, size) == want


# --------------------------------------------------------------------------------------------------------------
# PIL modes
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_modes(hf, mode):
    image = in_mode(mode)
    assert_same(preprocess([image], ours(LLAVA)), reference(hf, [image], LLAVA))
    assert_same(preprocess([image], ours(DEFAULT)), reference(hf, [image], DEFAULT))


def test_transparency_is_composited_on_white():
    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert (np.asarray(to_rgb(transparent)) == 255).all()
    half = Image.new("LA", (4, 4), (0, 128))
    assert (np.asarray(to_rgb(half)) == 127).all()


def test_png_with_transparency_round_trip(hf, tmp_path):
    """P and LA images written as PNG and opened again, so the transparency comes from the file."""
    for mode in ["P+transparency", "LA", "RGBA"]:
        path = tmp_path / f"{mode}.png"
        in_mode(mode).save(path)
        with Image.open(path) as image:
            assert_same(preprocess([image], ours(LLAVA)), reference(hf, [image], LLAVA))


# --------------------------------------------------------------------------------------------------------------
# EXIF orientation, and paths: Transformers applies EXIF (and a plain convert("RGB")) only to str paths
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def rotated_jpeg(tmp_path):
    """A 640x480 JPEG whose EXIF orientation tag is 6 (display rotated 90 degrees clockwise)."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo_at("coffee", (640, 480)).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_from_a_path(hf, rotated_jpeg):
    loaded = load_image(rotated_jpeg)
    assert loaded.size == (480, 640) and loaded.mode == "RGB"
    want = reference(hf, [str(rotated_jpeg)], LLAVA)  # Transformers' load_image: exif_transpose
    assert_same(preprocess([loaded], ours(LLAVA)), want)
    assert_same(preprocess([str(rotated_jpeg)], ours(LLAVA)), want)
    assert_same(preprocess(rotated_jpeg, ours(LLAVA)), want)  # a pathlib.Path too


def test_exif_orientation_ignored_for_pil_images(hf, rotated_jpeg):
    with Image.open(rotated_jpeg) as image:
        assert load_image(image) is image and image.size == (640, 480)
        want = reference(hf, [image], LLAVA)  # no exif_transpose for PIL inputs
        got = preprocess([image], ours(LLAVA))
    assert_same(got, want)
    assert np.abs(got - reference(hf, [str(rotated_jpeg)], LLAVA)).max() > 0.5  # the two really differ
    with Image.open(rotated_jpeg) as image:
        assert_same(preprocess(ImageOps.exif_transpose(image), ours(LLAVA)), preprocess(rotated_jpeg, ours(LLAVA)))


def test_rgba_path_drops_alpha_like_transformers(hf, tmp_path):
    """From a path Transformers converts with convert("RGB"): the alpha channel is dropped, not composited."""
    path = tmp_path / "rgba.png"
    in_mode("RGBA").save(path)
    assert_same(preprocess([load_image(path)], ours(LLAVA)), reference(hf, [str(path)], LLAVA))
    with Image.open(path) as image:
        composited = preprocess(image, ours(LLAVA))
    assert np.abs(composited - preprocess(path, ours(LLAVA))).max() > 0.5


# --------------------------------------------------------------------------------------------------------------
# pad to square (original LLaVA), against LlavaImageProcessor(do_pad=True)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize(
    "name, size",
    [
        ("coffee", (640, 480)),
        ("camera", (480, 640)),
        ("chelsea", (13, 7)),
        ("rocket", (2, 1)),
        ("astronaut", (336, 336)),
        ("rocket", (3000, 2000)),
        ("chelsea", (1, 300)),
    ],
)
def test_pad_to_square(hf, name, size, setting):
    image = photo_at(name, size)
    settings = SETTINGS[setting]
    config = ours(settings, do_pad=True, image_processor_type="LlavaImageProcessor")
    assert config.do_pad
    assert_same(preprocess([image], config), reference(hf, [image], {**settings, "do_pad": True}, llava=True))


@pytest.mark.parametrize("mode", ["RGBA", "L", "P+transparency", "I;16"])
def test_pad_to_square_modes(hf, mode):
    image = in_mode(mode)
    config = ours(LLAVA, do_pad=True)
    assert_same(preprocess([image], config), reference(hf, [image], {**LLAVA, "do_pad": True}, llava=True))


def test_pad_colour_is_the_truncated_mean():
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    config = ImageProcessorConfig(
        do_pad=True, do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False
    )
    got = preprocess(image, config)[0]  # [3, 4, 4]: one row of mean colour above and below
    assert got.shape == (3, 4, 4)
    assert tuple(got[:, 0, 0]) == (122, 116, 104) and tuple(got[:, 3, 3]) == (122, 116, 104)
    assert got[:, 1:3].sum() == 0


# --------------------------------------------------------------------------------------------------------------
# config loading
# --------------------------------------------------------------------------------------------------------------


def _tokenizer(hf):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 3, "USER": 4, "ASSISTANT": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = hf.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    wrapped.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return wrapped


def save_llava_processor(hf, folder, **image_settings):
    """A 5.x processor folder: processor_config.json with the image processor nested, written by Transformers."""
    image_processor = hf.LlavaImageProcessorPil(**image_settings)
    processor = hf.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=_tokenizer(hf),
        patch_size=14,
        vision_feature_select_strategy="default",
    )
    processor.save_pretrained(folder)
    return folder


def auto_reference(hf, folder, image):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The PIL backend, which minillava follows: with torchvision installed, the default is the
        # torchvision backend, whose resize is not PIL's.
        processor = hf.AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert processor.backend == "pil"
    return processor, processor(image, return_tensors="np")["pixel_values"]


def test_defaults_are_clip_image_processor_defaults(hf):
    default = ImageProcessorConfig()
    clip = hf.CLIPImageProcessorPil()
    assert (default.size, default.crop_size) == (clip.size.shortest_edge, (clip.crop_size.height, clip.crop_size.width))
    assert default.image_mean == tuple(clip.image_mean) == CLIP_MEAN
    assert default.image_std == tuple(clip.image_std) == CLIP_STD
    assert default.resample == int(clip.resample) == 3
    assert default.rescale_factor == clip.rescale_factor
    for flag in ["do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"]:
        assert getattr(default, flag) is getattr(clip, flag) is True
    assert default.do_pad is False and not hf.LlavaImageProcessorPil().do_pad


def test_preprocessor_config_json(hf, tmp_path):
    hf.CLIPImageProcessorPil(**LLAVA).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preprocessor_config.json"]
    config = load_image_processor_config(tmp_path)
    assert config == ImageProcessorConfig(size=336, crop_size=(336, 336))
    image = photo_at("coffee", (640, 480))
    assert_same(preprocess(image, config), auto_reference(hf, tmp_path, image)[1])


def test_processor_config_json(hf, tmp_path):
    save_llava_processor(hf, tmp_path, **LLAVA, do_pad=True)
    assert not (tmp_path / "preprocessor_config.json").exists()
    assert "image_processor" in json.loads((tmp_path / "processor_config.json").read_text())
    config = load_image_processor_config(tmp_path)
    assert config == ImageProcessorConfig(size=336, crop_size=(336, 336), do_pad=True)
    image = photo_at("camera", (640, 480))
    assert_same(preprocess(image, config), auto_reference(hf, tmp_path, image)[1])


def test_both_configs_nested_one_wins(hf, tmp_path):
    save_llava_processor(hf, tmp_path, **LLAVA, do_pad=True)
    hf.CLIPImageProcessorPil(size={"shortest_edge": 200}, crop_size={"height": 200, "width": 200}).save_pretrained(
        tmp_path
    )
    config = load_image_processor_config(tmp_path)
    assert (config.size, config.crop_size, config.do_pad) == (336, (336, 336), True)
    image = photo_at("chelsea", (451, 300))
    processor, want = auto_reference(hf, tmp_path, image)
    assert processor.do_pad and want.shape == (1, 3, 336, 336)
    assert_same(preprocess(image, config), want)


def test_processor_config_without_image_processor_falls_back(hf, tmp_path):
    hf.CLIPImageProcessorPil(size={"shortest_edge": 200}, crop_size={"height": 180, "width": 200}).save_pretrained(
        tmp_path
    )
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "LlavaProcessor", "patch_size": 14}))
    config = load_image_processor_config(tmp_path)
    assert (config.size, config.crop_size) == (200, (180, 200))
    image = photo_at("rocket", (640, 427))
    assert_same(preprocess(image, config), auto_reference(hf, tmp_path, image)[1])


def test_neither_config(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as caught:
        load_image_processor_config(tmp_path)
    for name in [str(tmp_path), "preprocessor_config.json", "processor_config.json"]:
        assert name in str(caught.value)
    (tmp_path / "processor_config.json").write_text(json.dumps({"patch_size": 14}))  # no image_processor entry
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load_image_processor_config(tmp_path)


@pytest.mark.parametrize(
    "settings",
    [
        {},  # every field omitted: CLIP defaults
        {"size": {"height": 300, "width": 200}, "crop_size": {"height": 256, "width": 192}},
        {"size": 336, "crop_size": 336},  # legacy ints: shortest edge, square crop
        {"size": 256, "default_to_square": True, "crop_size": [224, 200]},
        {"do_pad": True, "do_center_crop": False, "size": {"height": 224, "width": 224}},  # CLIP's do_pad: batch pad
        {"image_mean": 0.5, "image_std": 0.25, "resample": 2, "do_convert_rgb": False},
    ],
    ids=["omitted", "height-width", "int-sizes", "default-to-square", "clip-do-pad", "scalar-mean"],
)
def test_config_forms_match_auto_image_processor(hf, tmp_path, settings):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "CLIPImageProcessor", **settings})
    )
    config = load_image_processor_config(tmp_path)
    assert not config.do_pad
    for image in [photo_at("coffee", (640, 480)), photo_at("coffee", (13, 7))]:
        assert_same(preprocess(image, config), auto_reference(hf, tmp_path, image)[1])


def test_height_width_form_is_an_exact_resize():
    config = image_processor_config_from_dict({"size": {"height": 300, "width": 200}})
    assert (config.size, config.size_hw) == (200, (300, 200))


def test_unsupported_size_form():
    with pytest.raises(ValueError, match="size"):
        image_processor_config_from_dict({"size": {"shortest_edge": 336, "longest_edge": 672}})
    with pytest.raises(ValueError, match="crop_size"):
        image_processor_config_from_dict({"crop_size": {"shortest_edge": 336}})


# --------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        load_image(path)
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        preprocess(str(path), ImageProcessorConfig())


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.jpg"
    photo("astronaut").save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_image(path)


def test_zero_sized_image(tmp_path):
    empty = Image.new("RGB", (0, 0))
    with pytest.raises(ValueError, match="zero-sized"):
        load_image(empty)
    with pytest.raises(ValueError, match="zero-sized"):
        preprocess([photo("chelsea"), Image.new("L", (0, 7))], ImageProcessorConfig())


def test_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match=tmp_path.name):
        load_image(tmp_path)


def test_wrong_types():
    with pytest.raises(ValueError, match="at least one"):
        preprocess([], ImageProcessorConfig())
    with pytest.raises(TypeError, match="ndarray"):
        preprocess([np.zeros((4, 4, 3), np.uint8)], ImageProcessorConfig())
    with pytest.raises(TypeError):
        load_image(42)


def test_no_convert_needs_rgb():
    config = ImageProcessorConfig(do_convert_rgb=False)
    assert preprocess(photo("chelsea"), config).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="'L'"):
        preprocess(photo("camera"), config)


def test_uncropped_images_of_different_sizes_cannot_stack():
    config = ImageProcessorConfig(do_center_crop=False)
    assert preprocess(photo_at("chelsea", (640, 480)), config).shape == (1, 3, 224, 298)
    with pytest.raises(ValueError, match="different sizes"):
        preprocess([photo_at("chelsea", (640, 480)), photo_at("chelsea", (480, 640))], config)
