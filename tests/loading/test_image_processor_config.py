"""The image processor's settings (minillava.loading.preprocess.load_image_processor_config) from every file form a
checkpoint folder has: preprocessor_config.json (4.x and older saves), processor_config.json with the image
processor nested (5.x), both, neither; CLIP's (llava-1.5) and SigLIP's (llava-interleave), each type with its own
defaults; each checked against the pixel_values Transformers' AutoImageProcessor (PIL backend) gives for the same
folder."""

import json
import re
import warnings

import pytest

from minillava.loading.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    SIGLIP_DEFAULTS,
    SIGLIP_MEAN,
    SIGLIP_STD,
    ImageProcessorConfig,
    image_processor_config_from_dict,
    load_image_processor_config,
    preprocess,
)

from .images import INTERLEAVE_FOLDER, LLAVA, assert_same, in_mode, photo_at


@pytest.fixture(scope="module")
def hf():
    """The Transformers PIL-backend classes (imported once; they are slow to import)."""
    import transformers

    return transformers


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


# ---------------------------------------------------------------------------------------------------------------
# SigLIP (llava-interleave): its own defaults, so that CLIP's crop never applies to it
# ---------------------------------------------------------------------------------------------------------------


def test_defaults_are_siglip_image_processor_defaults(hf):
    siglip = hf.SiglipImageProcessorPil()
    assert SIGLIP_DEFAULTS.size_hw == (siglip.size.height, siglip.size.width) == (224, 224)
    assert SIGLIP_DEFAULTS.output_hw == (224, 224)
    assert SIGLIP_DEFAULTS.image_mean == tuple(siglip.image_mean) == SIGLIP_MEAN
    assert SIGLIP_DEFAULTS.image_std == tuple(siglip.image_std) == SIGLIP_STD
    assert SIGLIP_DEFAULTS.resample == int(siglip.resample) == 3
    assert SIGLIP_DEFAULTS.rescale_factor == siglip.rescale_factor
    assert not SIGLIP_DEFAULTS.do_center_crop and not siglip.do_center_crop
    for flag in ["do_resize", "do_rescale", "do_normalize", "do_convert_rgb"]:
        assert getattr(SIGLIP_DEFAULTS, flag) is getattr(siglip, flag) is True


def test_published_interleave_preprocessor_config(hf):
    """llava-interleave-qwen-0.5b-hf's folder as published (tests/data): preprocessor_config.json gives an exact
    384 x 384 resize, no crop (the json has no do_center_crop, and CLIP's default must not apply), mean = std = 0.5,
    do_convert_rgb null; its processor_config.json has no "image_processor" entry."""
    config = load_image_processor_config(INTERLEAVE_FOLDER)
    assert config == ImageProcessorConfig(
        size=384,
        size_hw=(384, 384),
        do_center_crop=False,
        image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
        do_convert_rgb=None,
    )
    assert config.output_hw == (384, 384)
    for image in [photo_at("coffee", (640, 480)), photo_at("chelsea", (13, 7)), in_mode("RGB+transparency")]:
        processor, want = auto_reference(hf, INTERLEAVE_FOLDER, image)
        assert type(processor).__name__ == "SiglipImageProcessorPil" and processor.do_convert_rgb is None
        assert want.shape == (1, 3, 384, 384)
        assert_same(preprocess(image, config), want)


@pytest.mark.parametrize(
    "settings",
    [
        {},  # every field omitted: SigLIP's defaults, 224 x 224, no crop
        {"size": {"height": 30, "width": 30}},  # the tiny test model's
        {"size": {"height": 60, "width": 40}, "resample": 2, "do_convert_rgb": True},
        {"size": {"height": 50, "width": 50}, "do_center_crop": False, "image_mean": [0.4, 0.5, 0.6]},
        {"size": {"height": 50, "width": 50}, "do_pad": True},  # a batch pad, no-op after the exact resize
    ],
    ids=["omitted", "tiny", "non-square-bilinear", "explicit-no-crop", "do-pad"],
)
def test_siglip_config_forms_match_auto_image_processor(hf, tmp_path, settings):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "SiglipImageProcessor", **settings})
    )
    config = load_image_processor_config(tmp_path)
    assert not config.do_center_crop and not config.do_pad and config.size_hw is not None
    for image in [photo_at("coffee", (640, 480)), photo_at("coffee", (13, 7)), in_mode("L")]:
        processor, want = auto_reference(hf, tmp_path, image)
        assert type(processor).__name__ == "SiglipImageProcessorPil"
        assert_same(preprocess(image, config), want)


def test_siglip_nested_in_processor_config(hf, tmp_path):
    """The 5.x save form: LlavaProcessor.save_pretrained nests the SigLIP image processor in processor_config.json."""
    image_processor = hf.SiglipImageProcessorPil(size={"height": 384, "width": 384})
    hf.LlavaProcessor(
        image_processor=image_processor, tokenizer=_tokenizer(hf), patch_size=14, vision_feature_select_strategy="full"
    ).save_pretrained(tmp_path)
    nested = json.loads((tmp_path / "processor_config.json").read_text())["image_processor"]
    assert nested["image_processor_type"].startswith("Siglip")
    config = load_image_processor_config(tmp_path)
    assert (config.size_hw, config.do_center_crop, config.image_mean) == ((384, 384), False, SIGLIP_MEAN)
    image = photo_at("rocket", (640, 427))
    assert_same(preprocess(image, config), auto_reference(hf, tmp_path, image)[1])


@pytest.mark.parametrize("kind", ["CLIPImageProcessor", "SiglipImageProcessor"])
def test_do_convert_rgb_null_true_false(kind):
    """null: RGB images as they are, other modes converted (Transformers converts nothing: test_preprocess.py);
    true: every image converted; false: RGB only. An omitted field is the class default, true."""
    forms = {None: None, True: True, False: False}
    for value, want in forms.items():
        config = image_processor_config_from_dict({"image_processor_type": kind, "do_convert_rgb": value})
        assert config.do_convert_rgb is want
    assert image_processor_config_from_dict({"image_processor_type": kind}).do_convert_rgb is True
    grey = in_mode("L")
    null = image_processor_config_from_dict({"image_processor_type": kind, "do_convert_rgb": None})
    assert_same(
        preprocess(grey, null), preprocess(grey, image_processor_config_from_dict({"image_processor_type": kind}))
    )
    with pytest.raises(ValueError, match="'L'"):
        preprocess(grey, image_processor_config_from_dict({"image_processor_type": kind, "do_convert_rgb": False}))


# ---------------------------------------------------------------------------------------------------------------
# Bad values: one ValueError naming the file, the field and what was expected
# ---------------------------------------------------------------------------------------------------------------

BAD_SETTINGS = {  # id: (field, value, words of the message)
    "size-negative": ("size", {"shortest_edge": -3}, "'size' must be a positive whole number of pixels; got -3"),
    "size-string": ("size", {"shortest_edge": "big"}, "'size' must be a positive whole number of pixels; got 'big'"),
    "size-true": ("size", True, "'size' must be {'shortest_edge': S} or {'height': h, 'width': w}; got True"),
    "size-huge": ("size", 10**9, "'size' of 1000000000 x 1000000000 pixels is over minillava's bound of 89,478,485"),
    "size-hw-huge": ("size", {"height": 10**5, "width": 10**5}, "'size' of 100000 x 100000 pixels is over"),
    "size-hw-float": ("size", {"height": 30.5, "width": 30}, "'size' must be two positive whole numbers"),
    "crop-zero": ("crop_size", {"height": 0, "width": 5}, "'crop_size' must be two positive whole numbers"),
    "crop-huge": ("crop_size", {"height": 10**6, "width": 10**6}, "'crop_size' of 1000000 x 1000000 pixels is over"),
    "crop-form": ("crop_size", {"shortest_edge": 336}, "'crop_size' must be {'height': h, 'width': w}"),
    "mean-nan": ("image_mean", [float("nan"), 0.5, 0.5], "'image_mean' must be 3 finite numbers (R, G, B); got (nan,"),
    "mean-strings": ("image_mean", ["a", "b", "c"], "'image_mean' must be 3 finite numbers"),
    "mean-two": ("image_mean", [0.5, 0.5], "'image_mean' must be 3 finite numbers"),
    "mean-dict": ("image_mean", {"r": 1}, "'image_mean' must be 3 finite numbers"),
    "std-zero": ("image_std", [0, 1, 1], "'image_std' must be 3 numbers > 0; got (0, 1, 1)"),
    "std-negative": ("image_std", -1, "'image_std' must be 3 numbers > 0; got (-1, -1, -1)"),
    "std-inf": ("image_std", [1, float("inf"), 1], "'image_std' must be 3 finite numbers"),
    "resample-unknown": ("resample", 99, "'resample' must be a PIL resampling filter code (0, 1, 2, 3, 4, 5"),
    "resample-name": ("resample", "bicubic", "'resample' must be a PIL resampling filter code"),
    "rescale-inf": ("rescale_factor", float("inf"), "'rescale_factor' must be a finite number > 0; got inf"),
    "rescale-zero": ("rescale_factor", 0, "'rescale_factor' must be a finite number > 0; got 0"),
    "rescale-string": ("rescale_factor", "1/255", "'rescale_factor' must be a finite number > 0; got '1/255'"),
    "flag-string": ("do_resize", "false", "'do_resize' must be true or false; got 'false'"),
    "pad-flag-number": ("do_pad", 2, "'do_pad' must be true or false; got 2"),
    "square-flag-string": ("default_to_square", "yes", "'default_to_square' must be true or false; got 'yes'"),
    "convert-string": ("do_convert_rgb", "no", "'do_convert_rgb' must be true, false or null; got 'no'"),
    "type-number": ("image_processor_type", 5, "'image_processor_type' must be a class name"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_bad_value_in_preprocessor_config_json(tmp_path, case):
    field, value, words = BAD_SETTINGS[case]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "LlavaImageProcessor",
                                                                   field: value}))  # fmt: skip
    with pytest.raises(ValueError) as caught:
        load_image_processor_config(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'preprocessor_config.json'}: image processor setting {words}")


@pytest.mark.parametrize("case", ["crop-zero", "std-zero", "flag-string", "resample-name"])
def test_bad_value_nested_in_processor_config_json(tmp_path, case):
    field, value, words = BAD_SETTINGS[case]
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": {field: value}, "patch_size": 14}))
    where = f"{tmp_path / 'processor_config.json'} ('image_processor'): image processor setting {words}"
    with pytest.raises(ValueError, match=re.escape(where)):
        load_image_processor_config(tmp_path)


@pytest.mark.parametrize("entry", [[1, 2], "CLIPImageProcessor", 5])
def test_image_processor_entry_that_is_not_an_object(tmp_path, entry):
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": entry}))
    where = f"{tmp_path / 'processor_config.json'} ('image_processor'): the image processor settings must be a JSON"
    with pytest.raises(ValueError, match=re.escape(where)):
        load_image_processor_config(tmp_path)


def test_bad_settings_in_code():
    """The same checks when the settings come from code, not a file."""
    with pytest.raises(ValueError, match=r"^image processor setting 'crop_size' must be two positive whole numbers"):
        ImageProcessorConfig(crop_size=(0, 5))
    with pytest.raises(ValueError, match=r"^image processor setting 'size' of 10000 x 10000 pixels is over"):
        ImageProcessorConfig(size=10_000)
    with pytest.raises(ValueError, match=r"^fuzzed: image processor setting 'image_std' must be 3 numbers > 0"):
        image_processor_config_from_dict({"image_std": [1, 0, 1]}, "fuzzed")
    with pytest.raises(ValueError, match=r"^image processor settings: the image processor settings must be a JSON"):
        image_processor_config_from_dict(["size", 3])


def test_null_flags_are_off_as_in_transformers():
    config = image_processor_config_from_dict({"do_center_crop": None, "do_pad": None, "image_processor_type": None})
    assert config.do_center_crop is False and config.do_pad is False and config.output_hw is None
