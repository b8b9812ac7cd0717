"""Fuzz minillava's input doors: random and broken input, where every case must end in success or in one of the
documented errors, raised by a `raise` statement of minillava's own (so with a message written for the user).
Anything else (another exception type, a documented type raised inside NumPy, Pillow or Python, a hang) is a bug,
printed with what reproduces it.

Three surfaces, each a door through which a user's input enters:

- processor: ``processor(images=..., text=...)`` with random PIL images of every mode (transparency entries and
  palettes too) and size (thin, empty, past the size bound), texts with random ``<image>`` counts and unicode (lone
  surrogates too) and random call arguments; image files in every format, truncated, with flipped bytes, with a
  header that claims a huge size, or not files at all (a FIFO, a folder, a broken link); random image processor
  settings; ``decode`` of random ids; processor folders with one file damaged (load_processor).
  Documented errors: ValueError, TypeError, FileNotFoundError, IsADirectoryError.
- safetensors: a small valid file whose header is mutated (any field set to any JSON value, entries deleted or
  added, nesting thousands deep), whose bytes are truncated, flipped or appended, whose header length is wrong,
  whose offsets shift, overlap or leave gaps; then ``read_header`` and every tensor read, mapped and cast.
  Documented error: ValueError.
- chat_template: ``apply_chat_template`` on random structures (valid conversations with random nodes replaced,
  keys dropped, nesting thousands deep, batches), with llava-1.5's and llava-interleave's templates (natively and
  through Jinja) and a Jinja template of another kind. Documented error: ValueError.

Each case is built from (surface, seed, case number) alone, so any case can be run again by itself, with its
traceback:  python tools/fuzz.py --surface processor --seed 0 --case 1234

The suite runs a few hundred cases per surface (tests/loading/test_fuzz.py, the same generators); this tool runs
many. A case that runs past --time-limit is stopped (SIGALRM) and counted as a hang; a memory limit
(--memory-gb, RLIMIT_AS) turns a runaway allocation into a MemoryError instead of swapping.

Usage:
    python tools/fuzz.py                                  # 10,000 cases per surface, seed 0
    python tools/fuzz.py --cases 500 --surface safetensors
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import linecache
import os
import random
import reprlib
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minillava  # noqa: E402
from minillava.demo import demo_folder  # noqa: E402
from minillava.loading.chat_template import LLAVA_INTERLEAVE_CHAT_TEMPLATE  # noqa: E402
from minillava.loading.preprocess import (  # noqa: E402
    MAX_IMAGE_PIXELS,
    image_processor_config_from_dict,
    load_image,
    preprocess,
)
from minillava.loading.processor import load_processor  # noqa: E402
from minillava.loading.safetensors import SAFETENSORS_DTYPES, map_buffer, read_header, tensor  # noqa: E402

MINILLAVA = Path(minillava.__file__).resolve().parent
# surface -> the exception types its functions document; exactly these count (not subclasses such as
# UnicodeDecodeError, a ValueError), and only when minillava raised them (`raised_by_minillava`)
DOCUMENTED = {
    "processor": (ValueError, TypeError, FileNotFoundError, IsADirectoryError),
    "safetensors": (ValueError,),
    "chat_template": (ValueError,),
}
SURFACES = tuple(DOCUMENTED)


class Hang(BaseException):
    """Raised by the alarm in a case that runs too long. A BaseException, so that no `except Exception` in the code
    under test can swallow it."""


@dataclasses.dataclass
class Case:
    description: str  # the input, shortened (the seed and case number reproduce it exactly)
    run: Callable[[], object]


@dataclasses.dataclass
class Tally:
    """What the cases of one surface ended in."""

    surface: str
    seed: int
    # "ok", each documented type ("ValueError", ...), "unexpected", "hang": they add up to the cases
    counts: Counter = dataclasses.field(default_factory=Counter)
    unexpected: list = dataclasses.field(default_factory=list)  # (case number, description, "Type: message (where)")
    unexpected_types: Counter = dataclasses.field(default_factory=Counter)  # type name -> cases
    hangs: list = dataclasses.field(default_factory=list)  # (case number, description)
    seconds: float = 0.0

    @property
    def cases(self) -> int:
        return sum(self.counts.values())

    def report(self, shown: int = 5) -> str:
        """The first few unexpected outcomes and hangs, each with what reproduces it."""
        lines = []
        for number, description, error in self.unexpected[:shown]:
            lines.append(f"  {self.surface} seed {self.seed} case {number}: {description}\n    -> {error}")
        for number, description in self.hangs[:shown]:
            lines.append(f"  {self.surface} seed {self.seed} case {number}: {description}\n    -> hang")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Running cases
# ---------------------------------------------------------------------------------------------------------------


def make_case(surface: str, seed: int, number: int, env: Environment) -> Case:
    """The case `number` of `surface` for `seed`: its random choices come from a generator seeded with all three.
    Its files are written into the emptied scratch folder."""
    env.clear_scratch()
    rng = random.Random(f"{surface}/{seed}/{number}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's, while the case's image files are written
        return GENERATORS[surface](rng, env)


def run_case(case: Case, time_limit: float) -> BaseException | None:
    """Run one case with an alarm after `time_limit` seconds; -> the exception it ended in (a Hang if it ran out of
    time), or None for success."""

    def on_alarm(signum, frame):
        raise Hang

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's and NumPy's warnings are not outcomes
            case.run()
        return None
    except (Exception, Hang) as err:
        return err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fuzz(surface: str, cases: int, seed: int, env: Environment, time_limit: float = 10.0, first: int = 0) -> Tally:
    """Run cases first .. first + cases - 1 of `surface` and tally their outcomes."""
    tally = Tally(surface, seed)
    start = time.perf_counter()
    for number in range(first, first + cases):
        case = make_case(surface, seed, number, env)
        error = run_case(case, time_limit)
        if error is None:
            tally.counts["ok"] += 1
        elif isinstance(error, Hang):
            tally.counts["hang"] += 1
            tally.hangs.append((number, case.description))
        elif type(error) in DOCUMENTED[surface] and raised_by_minillava(error):
            tally.counts[type(error).__name__] += 1
        else:
            tally.counts["unexpected"] += 1
            tally.unexpected_types[type(error).__name__] += 1
            filename, line = origin(error)
            what = f"{type(error).__name__}: {str(error)[:300]} (raised at {filename}:{line})"
            tally.unexpected.append((number, case.description, what))
    tally.seconds = time.perf_counter() - start
    return tally


def origin(error: BaseException) -> tuple[str, int]:
    """(file, line) of the statement that raised a caught `error`: the innermost frame of its traceback."""
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename, tb.tb_lineno


def raised_by_minillava(error: BaseException) -> bool:
    """Whether `error` comes from a `raise` statement of minillava's own, whose message was written for the user.
    A documented type raised anywhere else names nothing: NumPy's ValueError for an array too big, the TypeError of
    a dict looked up in a dict, Python's ValueError for a file name with a NUL."""
    filename, line = origin(error)
    inside = Path(filename).resolve().is_relative_to(MINILLAVA)
    return inside and linecache.getline(filename, line).lstrip().startswith("raise")


class Environment:
    """What the cases share: processors (the bundled demo's, and variants with other image settings), a copy of
    the demo's processor files to damage, and a scratch folder emptied before every case."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.scratch = self.workdir / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        demo = load_processor()  # llava-1.5's files at the demo's sizes: crop 54, patches of 6
        config = demo.image_processor_config
        variants = {
            "demo": config,
            "siglip": dataclasses.replace(config, size=30, size_hw=(30, 30), do_center_crop=False),
            "pad": dataclasses.replace(config, do_pad=True),
            "no-crop": dataclasses.replace(config, do_center_crop=False),
            "convert-null": dataclasses.replace(config, do_convert_rgb=None),
            "convert-false": dataclasses.replace(config, do_convert_rgb=False),
        }
        self.processors = {name: _with_image_config(demo, c) for name, c in variants.items()}
        interleave = copy.copy(demo)
        interleave.chat_template = LLAVA_INTERLEAVE_CHAT_TEMPLATE
        other = copy.copy(demo)
        other.chat_template = OTHER_TEMPLATE
        self.chat_processors = {"llava-1.5": demo, "llava-interleave": interleave, "other": other}
        self.demo_files = {name: (demo_folder() / name).read_bytes() for name in PROCESSOR_FILES}

    def clear_scratch(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir()


def _with_image_config(processor, config):
    variant = copy.copy(processor)
    variant.image_processor_config = config
    return variant


# ---------------------------------------------------------------------------------------------------------------
# Random values
# ---------------------------------------------------------------------------------------------------------------

# Texts are glued from these: words, markers and special tokens of both templates, and unicode that tokenizers
# treat specially (combining marks, byte-order mark, right-to-left override, NUL, byte-token look-alikes).
PIECES = [
    "What", " is", " shown", "?", " ", "  ", "\n", "\t", "\r\n", "<image>", "<image>", "<image>", "</s>", "<s>",
    "<pad>", "<unk>", "<|im_end|>", "<|im_start|>", "USER:", "ASSISTANT:", "café", "日本", "🎈", "\u0301", "\x00",
    "\ufeff", "\u202e", "<0x41>", "\u2581", "image>", "<image", "<<image>>", "{{ x }}", "{% if %}",
]  # fmt: skip
JSON_KEYS = ["role", "content", "type", "text", "image", "image_url", "url", "dtype", "shape", "data_offsets"]


def random_text(rng: random.Random) -> str:
    parts = [rng.choice(PIECES) for _ in range(rng.randint(0, 10))]
    if rng.random() < 0.15:
        parts.append("".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 5))))  # any code point
    if rng.random() < 0.08:
        parts.insert(rng.randint(0, len(parts)), chr(rng.randint(0xD800, 0xDFFF)))  # a lone surrogate
    if rng.random() < 0.02:
        parts.append("x" * rng.randint(1000, 20000))
    return "".join(parts)


def random_value(rng: random.Random, depth: int = 3, json_only: bool = False):
    """Any value a JSON file or a careless caller could hand over (and, unless `json_only`, bytes, which only
    Python could)."""
    kind = rng.randrange(14 if depth > 0 else 10)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 2, 7, 255, 256, 2**31, 2**32, 2**63, 2**64, -(2**63), 10**30])
    if kind == 3:
        return rng.randint(-10, 100)
    if kind == 4:
        return rng.choice([0.0, -0.0, 0.5, 1.5, -3.25, 1e308, float("nan"), float("inf"), float("-inf")])
    if kind in (5, 6):
        return random_text(rng)
    if kind == 7:
        return rng.choice(JSON_KEYS)
    if kind == 8:
        return random_text(rng) if json_only else rng.randbytes(rng.randint(0, 8))
    if kind == 9:
        return ""
    if kind in (10, 11):
        return [random_value(rng, depth - 1, json_only) for _ in range(rng.randint(0, 4))]
    if kind == 12:
        return tuple(random_value(rng, depth - 1, json_only) for _ in range(rng.randint(0, 3)))
    keys = [rng.choice(JSON_KEYS) if rng.random() < 0.7 else random_text(rng) for _ in range(rng.randint(0, 4))]
    return {key: random_value(rng, depth - 1, json_only) for key in keys}


def nested(rng: random.Random, value, levels: int | None = None):
    """`value` inside lists (or dicts) nested thousands of levels deep."""
    for _ in range(levels or rng.randint(500, 5000)):
        value = [value] if rng.random() < 0.8 else {"content": value}
    return value


def short(value) -> str:
    return reprlib.repr(value)


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------

MODES = "1 L LA La P PA RGB RGBA RGBa RGBX CMYK YCbCr LAB HSV I I;16 I;16L I;16B I;16N F".split()  # all Pillow makes
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "TGA"]


def random_image(rng: random.Random, big: bool = True) -> Image.Image:
    """A PIL image of a random mode and size (mostly small; sometimes thin, empty, or, with `big`, past the size
    bound), random pixels, and now and then a transparency entry or a palette of any kind."""
    mode = rng.choice(MODES)
    shape = rng.random()
    if shape < 0.75:
        size = (rng.randint(1, 48), rng.randint(1, 48))
    elif shape < 0.87:
        size = (rng.randint(1, 3), rng.choice([700, 5000, 100_000, 1_000_000]))  # thin: a long resize target
    elif shape < 0.94:
        size = (0, rng.randint(0, 9))  # no pixels
    elif shape < 0.99 or not big:
        size = (rng.randint(100, 400), rng.randint(100, 400))
    else:
        size = (9500, 9500)  # 90 megapixels: over the bound (made as mode 1, 1 byte a pixel)
        mode = "1"
    if rng.random() < 0.5:
        size = size[::-1]
    image = Image.new(mode, size)
    if size[0] * size[1] <= 100_000:
        image.frombytes(rng.randbytes(len(image.tobytes())))  # random bytes: NaN and inf in F images too
    if rng.random() < 0.2:
        image.info["transparency"] = rng.choice([0, 17, 255, (1, 2, 3), b"\x00\x80", random_value(rng, 1)])
    if mode in ("P", "PA") and rng.random() < 0.3:
        try:
            image.putpalette(rng.randbytes(rng.choice([3, 48, 768, 1024])), rng.choice(["RGB", "RGBA"]))
        except ValueError:
            pass  # a palette Pillow refuses to set is no input
    return image


def describe_image(image):
    """A PIL image (or a list of them, or anything else) in words: mode, size, transparency."""
    if isinstance(image, (list, tuple)):
        return [describe_image(item) for item in image]
    if not isinstance(image, Image.Image):
        return image
    transparency = image.info.get("transparency")
    return f"{image.mode} {image.width}x{image.height}" + (
        f" transparency={short(transparency)}" if transparency else ""
    )


def png_with_size(width: int, height: int) -> bytes:
    """A small PNG whose header (IHDR) claims width x height: Pillow reads the size from it before any pixel."""
    buffer = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))  # the chunk's CRC
    return bytes(data)


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A file's bytes damaged one way: truncated, bytes flipped, junk appended, or emptied."""
    kind = rng.randrange(5)
    if kind == 0 and data:
        cut = rng.randrange(len(data))
        return data[:cut], f"truncated at {cut}"
    if kind == 1 and data:
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        return bytes(damaged), "bytes flipped"
    if kind == 2:
        return data + rng.randbytes(rng.randint(1, 64)), "junk appended"
    if kind == 3:
        return b"", "emptied"
    return data, "intact"


# ---------------------------------------------------------------------------------------------------------------
# processor
# ---------------------------------------------------------------------------------------------------------------


def processor_case(rng: random.Random, env: Environment) -> Case:
    kind = rng.choices(["call", "file", "settings", "decode", "folder"], weights=[40, 20, 15, 15, 10])[0]
    return {
        "call": call_case,
        "file": file_case,
        "settings": settings_case,
        "decode": decode_case,
        "folder": folder_case,
    }[kind](rng, env)


def call_case(rng: random.Random, env: Environment) -> Case:
    """processor(images=..., text=...) with random images, prompts and arguments."""
    name = rng.choice(list(env.processors))
    processor = env.processors[name]
    texts = [random_text(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
    markers = sum(text.count("<image>") for text in texts)
    n_images = markers if rng.random() < 0.7 else rng.randint(0, 4)
    images = [random_image(rng) for _ in range(min(n_images, 8))]
    kwargs = {}
    shape = rng.random()
    if shape < 0.15 and len(texts) > 1:  # one list of images per prompt
        counts = [text.count("<image>") for text in texts]
        kwargs["images"] = [[random_image(rng, big=False) for _ in range(min(c, 4))] for c in counts]
    elif images or shape < 0.3:
        kwargs["images"] = images[0] if len(images) == 1 and rng.random() < 0.5 else images
    if rng.random() < 0.05:
        kwargs["images"] = random_value(rng)  # not images at all
    if rng.random() < 0.9:
        kwargs["text"] = texts[0] if len(texts) == 1 and rng.random() < 0.5 else texts
    if rng.random() < 0.05:
        kwargs["text"] = random_value(rng)
    if rng.random() < 0.3:
        kwargs["padding"] = rng.choice([True, False, "longest", "do_not_pad", "max_length", 1, None, [True]])
    if rng.random() < 0.2:
        kwargs["padding_side"] = rng.choice([None, "left", "right", "middle", 0])
    shown = {key: describe_image(value) if key == "images" else value for key, value in kwargs.items()}
    return Case(f"{name} processor({short(shown)})", lambda: processor(**kwargs))


def file_case(rng: random.Random, env: Environment) -> Case:
    """An image file, damaged or not, or a path that is no image file, through load_image or the processor."""
    path = env.scratch / f"image.{rng.choice(['png', 'jpg', 'gif', 'bin'])}"
    kind = rng.random()
    if kind < 0.6:
        image, fmt = random_image(rng, big=False), rng.choice(FORMATS)
        if max(image.size) > 16383 and fmt in ("JPEG", "WEBP"):  # their limits (libjpeg would print a line)
            fmt = "PNG"
        buffer, options = io.BytesIO(), {}
        if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and rng.random() < 0.4:  # an EXIF block, for the bytes to break
            exif = Image.Exif()
            exif[0x0112] = rng.randint(0, 9)  # the orientation load_image applies
            exif[0x010F] = "camera maker"
            options["exif"] = exif
        try:
            image.save(buffer, format=fmt, **options)
        except Exception:  # a mode or size this format cannot hold (the fuzzer's own setup): an RGB PNG instead
            buffer, fmt = io.BytesIO(), "PNG"
            Image.new("RGB", (max(image.width, 1), max(image.height, 1))).save(buffer, format="PNG")
        data, damage = mutate_bytes(rng, buffer.getvalue())
        path.write_bytes(data)
        what = f"{fmt} file{' with EXIF' if options else ''} of a {describe_image(image)} image, {damage}"
    elif kind < 0.75:
        width, height = rng.choice(
            [(1, 1_000_000), (1_000_000, 1), (20_000, 20_000), (0, 5), (2**31 - 1, 1), (9500, 9500)]
        )
        path.write_bytes(png_with_size(width, height))
        what = f"PNG whose header claims {width}x{height}"
    elif kind < 0.8:
        path.write_bytes(rng.randbytes(rng.randint(0, 300)))
        what = "random bytes"
    else:
        what = rng.choice(["missing", "folder", "fifo", "broken link", "link loop"])
        if what == "folder":
            path.mkdir()
        elif what == "fifo":
            os.mkfifo(path)
        elif what == "broken link":
            path.symlink_to(env.scratch / "nowhere")
        elif what == "link loop":
            path.symlink_to(path)
    processor = env.processors[rng.choice(list(env.processors))]
    given = str(path) if rng.random() < 0.5 else path
    call = rng.randrange(3)
    if call == 0:
        return Case(f"load_image({what})", lambda: load_image(given))
    if call == 1:
        return Case(f"preprocess({what})", lambda: preprocess(given, processor.image_processor_config))
    return Case(f"processor(images={what}, text='<image> hi')", lambda: processor(images=[given], text="<image> hi"))


SETTINGS_FIELDS = ["size", "crop_size", "do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb",
                   "rescale_factor", "image_mean", "image_std", "resample", "do_pad", "default_to_square",
                   "image_processor_type"]  # fmt: skip


def random_setting(rng: random.Random, field: str):
    """A value for an image processor field: often one of its own kind (valid or not), else anything."""
    if rng.random() < 0.3:
        return random_value(rng)
    side = lambda: rng.choice([rng.randint(1, 64), 0, -3, 10**5, 2**40, 1.5, "7", True])  # noqa: E731
    if field in ("size", "crop_size"):
        return rng.choice([side(), [side(), side()], {"height": side(), "width": side()}, {"shortest_edge": side()},
                           {"shortest_edge": side(), "longest_edge": side()}, {"height": side()}])  # fmt: skip
    if field in ("image_mean", "image_std"):
        number = lambda: rng.choice([0.5, 0.0, -1.0, 2.0, 1e30, float("nan"), float("inf"), "0.5"])  # noqa: E731
        return rng.choice([number(), [number(), number(), number()], [number(), number()], [number()] * 4])
    if field == "rescale_factor":
        return rng.choice([1 / 255, 1.0, 0.0, -1.0, float("nan"), float("inf"), "1/255", 10**300])
    if field == "resample":
        return rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, -1, 3.0, "bicubic", True])
    if field == "image_processor_type":
        return rng.choice(["CLIPImageProcessor", "SiglipImageProcessor", "LlavaImageProcessor", "", 5, None])
    return rng.choice([True, False, None, 0, 1, "false", "true", [True]])


def settings_case(rng: random.Random, env: Environment) -> Case:
    """Random image processor settings (as a json holds them) and one random image."""
    base = json.loads(env.demo_files["processor_config.json"])["image_processor"]
    settings = dict(rng.choice([base, {}, {"image_processor_type": "SiglipImageProcessor"}]))
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(SETTINGS_FIELDS)
        settings[field] = random_setting(rng, field)
    if rng.random() < 0.05:
        settings = random_value(rng)  # not a dict at all
    image = random_image(rng, big=False)

    def run():
        config = image_processor_config_from_dict(settings, "fuzzed settings")
        return preprocess(image, config)

    return Case(f"settings {short(settings)} on a {describe_image(image)} image", run)


def decode_case(rng: random.Random, env: Environment) -> Case:
    """decode / batch_decode of random ids: in and out of the vocabulary, huge, of every type and shape."""
    processor = env.processors["demo"]
    vocab = processor.vocab_size

    def an_id():
        return rng.choice([rng.randrange(vocab), vocab - 1, vocab, -1, 2**32, 2**40, 2**64, 1.0, "5", None, True])

    if rng.random() < 0.5:
        row = [an_id() for _ in range(rng.randint(0, 6))]
    else:
        row = [rng.randrange(vocab) for _ in range(6)]
    kind = rng.randrange(6)
    if kind == 0:
        ids = row
    elif kind == 1:
        dtype = rng.choice(["int8", "int32", "int64", "uint16", "uint64", "float32", "bool"])
        ids = np.asarray(rng.choices(range(-5, vocab + 5), k=rng.randint(0, 6))).astype(dtype)
    elif kind == 2:
        ids = [row, [rng.randrange(vocab) for _ in range(rng.randint(0, 4))]]  # rows, maybe of two lengths
    elif kind == 3:
        ids = np.asarray(rng.choices(range(vocab), k=6)).reshape(rng.choice([(2, 3), (1, 6), (6, 1, 1)]))
    elif kind == 4:
        ids = an_id()
    else:
        ids = random_value(rng)
    skip = rng.choice([True, False])
    if rng.random() < 0.5:
        return Case(f"decode({short(ids)})", lambda: processor.decode(ids, skip_special_tokens=skip))
    return Case(f"batch_decode({short(ids)})", lambda: processor.batch_decode(ids, skip_special_tokens=skip))


PROCESSOR_FILES = ["tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja",
                   "config.json"]  # fmt: skip


# Where mutate_json(..., json_only=True) puts a value nested thousands deep: `dump_json` writes it, which json.dumps
# cannot (it recurses).
DEEP = "<nested thousands deep>"


def mutate_json(rng: random.Random, data, json_only: bool = False):
    """One node of a JSON value replaced by a random value, or a key dropped; -> (new value, what was done)."""
    path, node = [], data
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append(key)
        node = node[key]
    if not path:
        return random_value(rng, json_only=json_only), "replaced whole"
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.25:
        del parent[path[-1]]
        return data, f"dropped {path}"
    if rng.random() < 0.1:
        value = DEEP if json_only else nested(rng, 1)
    else:
        value = random_value(rng, json_only=json_only)
    parent[path[-1]] = value
    return data, f"set {path} = {short(value)}"


def dump_json(value) -> str:
    return json.dumps(value).replace(json.dumps(DEEP), "[" * 5000 + "1" + "]" * 5000)


def folder_case(rng: random.Random, env: Environment) -> Case:
    """A copy of the demo's processor files (PROCESSOR_FILES, those load_processor reads) with one damaged: its JSON
    changed, its bytes broken, or deleted."""
    folder = env.scratch / "checkpoint"
    folder.mkdir()
    for name, data in env.demo_files.items():
        (folder / name).write_bytes(data)
    name = rng.choice([*PROCESSOR_FILES, "processor_config.json", "processor_config.json", "preprocessor_config.json"])
    kind = rng.random()
    if name == "preprocessor_config.json":  # an older folder: the image settings in a file of their own
        processor_config = json.loads(env.demo_files["processor_config.json"])
        settings = processor_config.pop("image_processor")
        (folder / "processor_config.json").write_text(json.dumps(processor_config))
        settings, what = mutate_json(rng, settings, json_only=True)
        (folder / name).write_text(dump_json(settings))
    elif name != "chat_template.jinja" and kind < 0.6:
        data, what = mutate_json(rng, json.loads(env.demo_files[name]), json_only=True)
        (folder / name).write_text(dump_json(data))
    elif kind < 0.9:
        data, what = mutate_bytes(rng, env.demo_files.get(name, b""))
        if name == "chat_template.jinja" and rng.random() < 0.3:
            data, what = b"\xff\xfe{{ bad", "not UTF-8"
        (folder / name).write_bytes(data)
    else:
        (folder / name).unlink()
        what = "deleted"
    image = Image.new("RGB", (40, 30))

    def run():
        processor = load_processor(folder)
        processor(images=[image], text="<image> What is shown?")
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
        )
        return processor.decode([1, 2, 3])

    return Case(f"load_processor with {name}: {what}", run)


# ---------------------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------------------


def safetensors_file(tensors: dict[str, tuple[str, list, bytes]], metadata: dict) -> tuple[dict, bytes]:
    """A valid safetensors file of tensors {name: (dtype, shape, bytes)}: -> (its header, the data buffer)."""
    header, data = dict(metadata), b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return header, data


def safetensors_case(rng: random.Random, env: Environment) -> Case:
    """A small valid file, mutated up to three ways, then read: the header, and every tensor mapped and cast."""
    tensors = {}
    for i in range(rng.randint(0, 4)):
        dtype = rng.choice(list(SAFETENSORS_DTYPES))
        shape = [rng.randint(0, 4) for _ in range(rng.randint(0, 3))]
        nbytes = int(np.prod(shape)) * SAFETENSORS_DTYPES[dtype].itemsize
        tensors[f"layers.{i}.weight"] = (dtype, shape, rng.randbytes(nbytes))
    metadata = {"__metadata__": {"format": "pt"}} if rng.random() < 0.5 else {}
    header, data = safetensors_file(tensors, metadata)
    header_size_delta, done = 0, []
    blob_damage = None
    for _ in range(rng.choice([0, 1, 1, 2, 3])):  # no mutation now and then: a valid file must load
        kind = rng.randrange(8)
        names = [n for n in header if n != "__metadata__"] if isinstance(header, dict) else []
        if kind <= 2 and names:  # one field of one entry set to anything (or to a value of its own kind)
            name, field = rng.choice(names), rng.choice(["dtype", "shape", "data_offsets"])
            if isinstance(header.get(name), dict):
                header[name][field] = value = _safetensors_value(rng, field, header[name], len(data))
                done.append(f"{name}.{field} = {short(value)}")
        elif kind == 3:  # the whole header, or one entry, mutated anywhere
            header, what = mutate_json(rng, header, json_only=True)
            done.append(f"header {what}")
        elif kind == 4 and isinstance(header, dict):
            done.append("entry added")
            header[random_text(rng) or "x"] = random_value(rng, json_only=True)
        elif kind == 5:
            header_size_delta = rng.choice([-8, -1, 1, 7, 2**20, 2**40, 2**63])
            done.append(f"header length {header_size_delta:+d}")
        elif kind == 6:
            blob_damage = rng.randrange(4)
            done.append(["file truncated", "bytes flipped", "bytes appended", "header nested deep"][blob_damage])
        elif rng.random() < 0.5:
            data = data[: rng.randrange(len(data) + 1)]
            done.append("data cut")
        else:
            data += rng.randbytes(rng.randint(1, 9))
            done.append("data grown")
    raw = dump_json(header).encode()
    if blob_damage == 3:
        raw = b"[" * 20000 + b"]" * 20000
    raw += b" " * (-len(raw) % 8)
    blob = struct.pack("<Q", max(0, min(len(raw) + header_size_delta, 2**64 - 1))) + raw + data
    if blob_damage == 0:
        blob = blob[: rng.randrange(len(blob) + 1)]
    elif blob_damage == 1:
        blob = bytearray(blob)
        for _ in range(rng.randint(1, 6)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        blob = bytes(blob)
    elif blob_damage == 2:
        blob += rng.randbytes(rng.randint(1, 20))
    path = env.scratch / "model.safetensors"
    path.write_bytes(blob)

    def run():
        entries, data_start = read_header(str(path))
        buffer = map_buffer(str(path), data_start)
        for info in entries.values():
            tensor(buffer, info, None)  # a memory-mapped view (bfloat16 decoded)
            tensor(buffer, info, np.float32)  # an in-memory float32 copy
        return entries

    return Case(f"safetensors of {len(tensors)} tensors, {'; '.join(done)}", run)


def _safetensors_value(rng: random.Random, field: str, info: dict, data_size: int):
    if rng.random() < 0.4:
        return random_value(rng, json_only=True)
    if field == "dtype":
        return rng.choice([*SAFETENSORS_DTYPES, "F8_E4M3", "f32", "", "BF16 "])
    if field == "shape":
        return rng.choice([[], [0], [2**40], [0, 2**62], [2**62, 2**62, 4], [1] * 65, [-1], [3, True], [1.0]])
    offsets = info.get("data_offsets")
    valid = isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)
    begin, end = offsets if valid else (0, 0)
    return rng.choice([[begin + 1, end + 1], [begin - 1, end - 1], [end, begin], [0, data_size], [0, 2**64],
                       [begin, end, 0], [begin], [True, end], [-4, end]])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# chat_template
# ---------------------------------------------------------------------------------------------------------------

# A template of another kind, rendered by Jinja: it refuses roles it does not know with raise_exception, and prints
# every content as JSON (so an unprintable or deeply nested content reaches Jinja's tojson).
OTHER_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{{ m['role'] }}: {{ m['content'] | tojson }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def random_conversation(rng: random.Random) -> list:
    """A valid conversation: an optional system message, turns with images and texts (image_url parts too)."""
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": [{"type": "text", "text": random_text(rng)}]})
    for turn in range(rng.randint(1, 4)):
        role = "user" if turn % 2 == 0 else "assistant"
        parts = [{"type": "text", "text": random_text(rng)} for _ in range(rng.randint(1, 3))]
        parts += [{"type": "image"} for _ in range(rng.randint(0, 2))]
        if rng.random() < 0.2:
            parts.append({"type": "image_url", "image_url": rng.choice([{"url": "http://x/y.png"}, "x", None, 5])})
        rng.shuffle(parts)
        messages.append({"role": role, "content": parts if rng.random() < 0.85 else random_text(rng)})
    return messages


def chat_template_case(rng: random.Random, env: Environment) -> Case:
    """apply_chat_template on a conversation with random damage, or on anything at all."""
    template = rng.choice(list(env.chat_processors))
    processor = env.chat_processors[template]
    kind = rng.random()
    if kind < 0.65:
        conversation, done = random_conversation(rng), []
        for _ in range(rng.randint(0, 3)):
            conversation, what = mutate_json(rng, conversation)
            done.append(what)
        what = "conversation " + ("; ".join(done) or "intact")
    elif kind < 0.75:
        conversation, what = [random_conversation(rng) for _ in range(rng.randint(1, 3))], "a batch"
        if rng.random() < 0.5:
            conversation[0], changed = mutate_json(rng, conversation[0])
            what += f" ({changed})"
    elif kind < 0.85:
        conversation, what = nested(rng, random_conversation(rng)), "a conversation nested deep"
        if rng.random() < 0.5:
            conversation = [{"role": "user", "content": [{"type": "text", "text": nested(rng, "x")}]}]
            what = "a text nested deep"
    else:
        conversation, what = random_value(rng), "any value"
    use_jinja = rng.random() < 0.4
    add = rng.choice([True, False, True, None, 1, "yes"])
    run = lambda: processor.apply_chat_template(conversation, add_generation_prompt=add, use_jinja=use_jinja)  # noqa: E731
    return Case(f"{template} template{' (Jinja)' if use_jinja else ''}: {what}: {short(conversation)}", run)


GENERATORS = {"processor": processor_case, "safetensors": safetensors_case, "chat_template": chat_template_case}


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def table(tallies: list[Tally]) -> str:
    """The outcomes of each surface, one row each: cases, successes, each documented error, other errors, hangs."""
    names = sorted({t.__name__ for types in DOCUMENTED.values() for t in types})
    head = ["surface", "cases", "ok", *names, "unexpected", "hangs", "seconds"]
    rows = []
    for t in tallies:
        counts = [t.counts[name] if any(x.__name__ == name for x in DOCUMENTED[t.surface]) else "-" for name in names]
        rows.append([t.surface, t.cases, t.counts["ok"], *counts, t.counts["unexpected"], t.counts["hang"],
                     f"{t.seconds:.0f}"])  # fmt: skip
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(str(v).rjust(w) for v, w in zip(r, widths, strict=True)) for r in [head, *rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--surface", choices=SURFACES, action="append", help="a surface to fuzz (default: all three)")
    parser.add_argument("--cases", type=int, default=10_000, help="cases per surface (default 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, help="run this one case and show its outcome and traceback")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds before a case counts as a hang")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="address-space limit of this process (GB)")
    args = parser.parse_args(argv)
    surfaces = args.surface or list(SURFACES)
    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with tempfile.TemporaryDirectory() as workdir:
        env = Environment(Path(workdir))
        if args.case is not None:
            for surface in surfaces:
                case = make_case(surface, args.seed, args.case, env)
                print(f"{surface} seed {args.seed} case {args.case}: {case.description}")
                error = run_case(case, args.time_limit)
                if error is None or isinstance(error, Hang):
                    print("  -> ok" if error is None else "  -> hang")
                    continue
                traceback.print_exception(error)
                documented = type(error) in DOCUMENTED[surface] and raised_by_minillava(error)
                print("  -> a documented error" if documented else "  -> UNEXPECTED")
            return 0
        print(f"fuzzing {', '.join(surfaces)}: {args.cases:,} cases each, seed {args.seed}, "
              f"{args.time_limit:g} s a case, bound {MAX_IMAGE_PIXELS:,} pixels an image", flush=True)  # fmt: skip
        tallies = []
        for surface in surfaces:
            tallies.append(fuzz(surface, args.cases, args.seed, env, args.time_limit))
            print(f"  {surface}: {tallies[-1].cases:,} cases in {tallies[-1].seconds:.0f} s", flush=True)
        print()
        print(table(tallies))
        bad = [t for t in tallies if t.unexpected or t.hangs]
        for t in bad:
            print(f"\n{t.surface}: {len(t.unexpected)} unexpected, {len(t.hangs)} hangs; the first:\n{t.report()}")
        other = sum((t.unexpected_types for t in tallies), Counter())
        if other:
            print("\nunexpected, by type:", ", ".join(f"{name} {count}" for name, count in sorted(other.items())))
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
