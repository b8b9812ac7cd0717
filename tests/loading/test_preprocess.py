"""minillava.loading.preprocess against Transformers' PIL-backend image processors (CLIPImageProcessorPil and
LlavaImageProcessorPil for llava-1.5, SiglipImageProcessorPil for llava-interleave, which the processors without
"Pil" and AutoImageProcessor fall back to without torchvision), on real photographs from scikit-image in every
size, aspect and PIL mode; and bad input. The settings' file forms: test_image_processor_config.py. Pixel values
are compared bit for bit (images.py)."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from minillava.loading.preprocess import (
    ImageProcessorConfig,
    load_image,
    preprocess,
    shortest_edge_size,
    to_rgb,
)

from .images import (
    DEFAULT,
    INTERLEAVE,
    INTERLEAVE_TINY,
    LLAVA,
    MODES,
    PHOTOS,
    SETTINGS,
    SIGLIP_SETTINGS,
    SIZES,
    assert_same,
    in_mode,
    ours,
    photo,
    photo_at,
    reference,
    siglip_reference,
)


@pytest.fixture(scope="module")
def hf():
    """The Transformers PIL-backend classes (imported once; they are slow to import)."""
    import transformers

    return transformers


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
# SigLIP (llava-interleave): exact resize to a square, no crop, mean = std = 0.5, against SiglipImageProcessorPil
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SIGLIP_SETTINGS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", PHOTOS)
def test_siglip_photo_sizes(hf, name, size, setting):
    """The published settings as they are for RGB photographs; the grayscale camera against do_convert_rgb=True,
    since with the published null Transformers refuses it (test_siglip_non_rgb_modes)."""
    image = photo_at(name, size)
    settings = SIGLIP_SETTINGS[setting]
    got = preprocess([image], ours(settings))
    assert got.shape == (1, 3, *(settings["size"][k] for k in ("height", "width")))
    assert_same(got, siglip_reference(hf, [image], settings, convert_rgb=image.mode != "RGB"))


@pytest.mark.parametrize("mode", MODES)
def test_siglip_modes(hf, mode):
    """With llava-interleave's published "do_convert_rgb": null, Transformers 5.24 converts nothing: RGB images
    (a transparent colour key too) are used as they are, and minillava gives the same; every other mode fails there
    (or, YCbCr and HSV, has its bands read as R, G, B), and minillava converts it to RGB (transparency on white) as
    Transformers does with do_convert_rgb=True (documented in image_processor_config_from_dict)."""
    image = in_mode(mode)
    for settings in (INTERLEAVE, INTERLEAVE_TINY):
        got = preprocess([image], ours(settings))
        if image.mode == "RGB":
            assert_same(got, siglip_reference(hf, [image], settings))  # the published settings, as they are
            continue
        assert_same(got, siglip_reference(hf, [image], settings, convert_rgb=True))
        try:
            unconverted = siglip_reference(hf, [image], settings)
        except (ValueError, TypeError):
            assert image.mode not in ("YCbCr", "HSV")
        else:
            assert image.mode in ("YCbCr", "HSV") and not np.array_equal(got, unconverted)


def test_siglip_batch_of_mixed_sizes_and_modes(hf):
    images = [
        photo_at("coffee", (640, 480)),
        photo_at("camera", (7, 13)),
        in_mode("RGBA"),
        in_mode("P"),
        photo("rocket"),
    ]
    got = preprocess(images, ours(INTERLEAVE))
    assert got.shape == (5, 3, 384, 384)
    assert_same(got, siglip_reference(hf, images, INTERLEAVE, convert_rgb=True))
    assert got.min() >= -1 and got.max() <= 1  # mean = std = 0.5: pixels in [-1, 1]


def test_siglip_does_not_crop_or_keep_the_aspect(hf):
    """A wide photo is squeezed to the square, not cropped: its left and right edges are still there."""
    image = photo_at("chelsea", (451, 300))
    config = ours(INTERLEAVE_TINY)
    assert not config.do_center_crop and config.size_hw == config.output_hw == (30, 30)
    want = np.asarray(image.resize((30, 30), Image.Resampling.BICUBIC), np.float64).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(preprocess(image, config)[0], (want - 0.5) / 0.5, atol=1e-6)


def test_siglip_png_with_transparency_and_paths(hf, tmp_path):
    """Files opened again (transparency from the file), and paths, which Transformers' load_image turns into RGB
    with convert("RGB") (alpha dropped) before the processor sees them, so the published settings apply."""
    for mode in ["P+transparency", "LA", "RGBA"]:
        path = tmp_path / f"{mode}.png"
        in_mode(mode).save(path)
        with Image.open(path) as image:
            assert_same(preprocess([image], ours(INTERLEAVE)), siglip_reference(hf, [image], INTERLEAVE, True))
        assert_same(preprocess([path], ours(INTERLEAVE)), siglip_reference(hf, [str(path)], INTERLEAVE))


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
