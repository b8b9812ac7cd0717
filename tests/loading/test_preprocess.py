"""minillava.loading.preprocess against Transformers' PIL-backend image processors (CLIPImageProcessorPil and
LlavaImageProcessorPil for llava-1.5, SiglipImageProcessorPil for llava-interleave, which the processors without
"Pil" and AutoImageProcessor fall back to without torchvision), on real photographs from scikit-image in every
size, aspect and PIL mode; and bad input. The settings' file forms: test_image_processor_config.py. Pixel values
are compared bit for bit (images.py)."""

import os
import re

import numpy as np
import pytest
from PIL import Image, ImageOps

from minillava.loading.preprocess import (
    MAX_IMAGE_PIXELS,
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
    png_with_size,
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


def test_jpeg_whose_exif_block_is_broken(tmp_path):
    """A tag that must hold a number holding text (the date-time tag 0x0132 renumbered 0x0108, CellWidth): Pillow's
    EXIF code raises struct.error while the orientation is applied. One ValueError naming the file."""
    exif = Image.Exif()
    exif[0x0112] = 8  # an orientation: the EXIF block is read to apply it
    exif[0x0132] = "2024:01:01 00:00:00"
    path = tmp_path / "broken_exif.jpg"
    photo_at("coffee", (9, 7)).save(path, exif=exif)
    data = path.read_bytes()
    assert data.count(b"\x01\x32\x00\x02") == 1  # the date-time entry: tag 0x0132, type 2 (text), big-endian
    path.write_bytes(data.replace(b"\x01\x32\x00\x02", b"\x01\x08\x00\x02"))
    with pytest.raises(ValueError, match=r"broken_exif\.jpg: cannot decode image \(required argument is not an"):
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


def test_images_not_in_a_list():
    with pytest.raises(TypeError, match="preprocess takes a PIL image, a path or a list of them, got generator"):
        preprocess((photo("chelsea") for _ in range(2)), ImageProcessorConfig())


# --------------------------------------------------------------------------------------------------------------
# bad input: sizes past the bound (MAX_IMAGE_PIXELS), refused before any pixel is decoded or resized
# --------------------------------------------------------------------------------------------------------------


def test_thin_png_whose_resize_is_too_large(tmp_path):
    """A 1 KB PNG of 1 x 1,000,000 pixels: small to decode, but a shortest edge of 336 makes it 336 x 336,000,000
    (339 GB); refused before the resize, naming the file and the sizes."""
    path = tmp_path / "thin.png"
    Image.new("L", (1_000_000, 1)).save(path)
    assert path.stat().st_size < 5000
    assert load_image(path).size == (1_000_000, 1)  # a million pixels: within the bound
    with pytest.raises(ValueError, match=r"thin\.png resized to a shortest edge of 336: 336000000x336 is 112,896,"):
        preprocess(path, ours(LLAVA))
    image = Image.new("L", (2, 300_000))
    with pytest.raises(ValueError, match=r"image 1 resized to a shortest edge of 336: 336x50400000"):
        preprocess([photo("chelsea"), image], ours(LLAVA))
    assert preprocess(image, ours(INTERLEAVE_TINY)).shape == (1, 3, 30, 30)  # an exact resize is small


def test_thin_image_padded_to_a_square_too_large():
    image = Image.new("RGB", (10_000, 1))
    with pytest.raises(ValueError, match=r"image 0 padded to a square: 10000x10000 is 100,000,000 pixels"):
        preprocess([image], ours(LLAVA, do_pad=True))


@pytest.mark.parametrize("width, height", [(20_000, 20_000), (10_000, 9_000)], ids=["over-twice", "over"])
def test_png_whose_header_claims_too_many_pixels(tmp_path, width, height):
    """Pillow refuses a file of more than twice Image.MAX_IMAGE_PIXELS and warns about one of more than that: both
    are our one error naming the file, raised from the header alone (the file holds 4 x 4 pixels)."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_size(width, height))
    with pytest.raises(ValueError, match=r"bomb\.png: too many pixels, refused as a possible decompression bomb"):
        load_image(path)
    with pytest.raises(ValueError, match=r"bomb\.png"):
        preprocess(str(path), ours(LLAVA))


def test_png_whose_header_claims_too_many_pixels_without_pillows_limit(tmp_path, monkeypatch):
    """Pillow's limit is global and may be switched off (Image.MAX_IMAGE_PIXELS = None); minillava's is not."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_size(20_000, 20_000))
    bound = f"{MAX_IMAGE_PIXELS:,}"
    with pytest.raises(ValueError, match=rf"bomb\.png: 20000x20000 is 400,000,000 pixels, over .* {bound}"):
        load_image(path)


def test_pil_image_over_the_pixel_bound():
    image = Image.new("1", (9_500, 9_500))  # 90 megapixels in 90 MB: mode 1 holds a byte a pixel
    with pytest.raises(ValueError, match=r"image: 9500x9500 is 90,250,000 pixels, over minillava's bound"):
        load_image(image)
    with pytest.raises(ValueError, match=r"9500x9500"):
        preprocess([image], ours(LLAVA))


# --------------------------------------------------------------------------------------------------------------
# bad input: paths that are not image files
# --------------------------------------------------------------------------------------------------------------


def test_fifo_as_image(tmp_path):
    """Opening a FIFO would wait for a writer forever: refused from its file type, before it is opened."""
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    with pytest.raises(ValueError, match=r"pipe\.png: not a regular file \(a FIFO, socket or device\)"):
        load_image(path)


def test_device_as_image():
    with pytest.raises(ValueError, match=r"/dev/null: not a regular file"):
        load_image("/dev/null")


@pytest.mark.parametrize("name", ["a\x00b.png", "x\udb8e.png"], ids=["nul", "lone-surrogate"])
def test_path_no_file_can_have(tmp_path, name):
    with pytest.raises(ValueError, match="not a possible file name"):
        load_image(str(tmp_path / name))


def test_broken_link(tmp_path):
    path = tmp_path / "link.png"
    path.symlink_to(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match=r"link\.png: no such image file"):
        load_image(path)


# --------------------------------------------------------------------------------------------------------------
# bad input: PIL modes and transparency entries
# --------------------------------------------------------------------------------------------------------------


def test_every_pillow_mode_converts():
    """Every mode Pillow can make goes to RGB: "La" (premultiplied alpha), which Pillow converts only to LA and
    Transformers therefore not at all, through LA."""
    for mode in ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I",
                 "I;16", "I;16L", "I;16B", "I;16N", "F"]:  # fmt: skip
        assert preprocess(Image.new(mode, (5, 3)), ours(DEFAULT)).shape == (1, 3, 224, 224), mode


def test_mode_La_goes_through_LA():
    la = in_mode("LA")
    premultiplied = la.convert("La")
    assert premultiplied.mode == "La"
    assert_same(preprocess(premultiplied, ours(LLAVA)), preprocess(premultiplied.convert("LA"), ours(LLAVA)))
    with pytest.raises(ValueError, match="conversion from La to L not supported"):
        premultiplied.convert("RGB")  # what Transformers' convert_to_rgb meets


@pytest.mark.parametrize(
    "mode, transparency",
    [("P", (1, 2, 3)), ("P", 300), ("L", "x"), ("RGB", 2**40), ("RGB", (1.5, 0, 0)), ("I;16", b"\x00\x10")],
)
def test_transparency_entry_that_does_not_fit_the_mode(mode, transparency):
    image = Image.new(mode, (4, 4))
    image.info["transparency"] = transparency
    name = re.escape(mode)
    with pytest.raises(ValueError, match=rf"image mode '{name}' with transparency .*: Pillow cannot convert"):
        preprocess(image, ours(LLAVA))


def test_pad_colour_of_a_mean_far_outside_0_1():
    """Pillow clips a colour to 0..255 but overflows on one past 64 bits: the pad colour is clipped first."""
    image = Image.new("RGB", (4, 2), (9, 9, 9))
    config = ImageProcessorConfig(
        do_pad=True, do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False,
        image_mean=(1e30, -5.0, 0.5),
    )  # fmt: skip
    got = preprocess(image, config)[0]  # [3, 4, 4]
    assert tuple(got[:, 0, 0]) == (255, 0, 127) and tuple(got[:, 1, 1]) == (9, 9, 9)
