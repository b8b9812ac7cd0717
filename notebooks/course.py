"""What every notebook of the course needs before it starts, in one place.

This file is a helper of the notebooks, not part of minillava: each notebook's first cell does

    import course
    model, processor, FOLDER = course.load_demo()   # the bundled demo model (or $MINILLAVA_NOTEBOOK_MODEL)
    transformers, torch = course.reference()        # None, None when Transformers is not installed

and then uses ``course.max_diff`` to say how far two arrays are apart, ``course.check_close`` in the exercises'
check cells, and ``%%needs_transformers`` on the cells that compare with Hugging Face Transformers: those run
when Transformers (and torch) are installed and print one line saying they were skipped when not, so that a
reader with minillava alone runs every cell that teaches. Notebook 7 starts with ``course.real_model_folder()``
instead (the real llava-1.5-7b, when $MINILLAVA_LLAVA_7B names its folder, and the ``%%real_model`` magic).
Notebook 9 also imports two scripts of the repository's tools/ with ``course.load_tool`` (the demo's pictures and
its stage-1 trainer).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np

import minillava

HERE = Path(__file__).resolve().parent

# llava-1.5-7b-hf's config.json, to compare the demo's sizes with the real model's: the copy beside this file (a
# course folder made by tools/student_notebooks.py), else the repository's.
LLAVA_7B_CONFIG = next(
    (p for p in (HERE / "llava-1.5-7b-hf", HERE.parent / "tests" / "data" / "llava-1.5-7b-hf") if p.is_dir()),
    HERE.parent / "tests" / "data" / "llava-1.5-7b-hf",
)

SKIPPED = "skipped: this cell checks against Hugging Face Transformers, which is not installed"


def repository() -> Path | None:
    """The minillava checkout these notebooks belong to, for the files of it beyond the package that notebook 9
    reads (tools/train_demo.py, the demo's pictures; tools/train_stage1.py; notebooks/data/): this folder when it
    holds them (a course folder written by tools/student_notebooks.py copies them in), the folder above it (the
    repository's notebooks/), or else the checkout minillava is imported from. None when none has tools/."""
    for root in (HERE, HERE.parent, Path(minillava.__file__).resolve().parents[1]):
        if (root / "tools" / "train_demo.py").is_file():
            return root
    return None


def load_tool(name: str):
    """tools/<name>.py of the repository as a module (notebook 9: "train_demo", "train_stage1"), imported once."""
    import importlib.util

    root = repository()
    if root is None:
        raise FileNotFoundError(
            f"tools/{name}.py not found: notebook 9 needs the minillava repository (git clone it and "
            '`pip install -e ".[notebooks]"` there)'
        )
    path = root / "tools" / f"{name}.py"
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "")).resolve() == path.resolve():
        return module  # already imported (train_stage1 imports train_demo itself)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: the dataclasses of a tool look their module up there
    spec.loader.exec_module(module)
    return module


def plot_defaults() -> None:
    """The course's plotting defaults: small figures (so the committed notebooks stay small), sharp pixels."""
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 72, "image.interpolation": "nearest"})


def load_demo():
    """The notebooks' model, its processor and its folder: the bundled demo model, or the checkpoint folder named
    by $MINILLAVA_NOTEBOOK_MODEL. Also sets the plotting defaults."""
    from minillava.demo import demo_folder

    plot_defaults()
    name = os.environ.get("MINILLAVA_NOTEBOOK_MODEL")  # None: the bundled demo model
    folder = Path(name) if name else demo_folder()
    return minillava.load_model(folder), minillava.load_processor(folder), folder


def llava_7b_config() -> minillava.LlavaConfig:
    """llava-1.5-7b-hf's configuration (no weights needed), for comparing sizes."""
    return minillava.load_config(LLAVA_7B_CONFIG)


def real_model_folder() -> Path | None:
    """Notebook 7's llava-1.5-7b folder, named by $MINILLAVA_LLAVA_7B, or None (said once, in one printed line).

    Registers the ``%%real_model`` cell magic: a cell that starts with it runs only when the folder is given.
    Also sets the plotting defaults."""
    plot_defaults()
    name = os.environ.get("MINILLAVA_LLAVA_7B")
    folder = Path(name) if name else None
    if folder:
        print(f"the weights: {folder}: every cell runs")
    else:
        print(
            "MINILLAVA_LLAVA_7B is not set: the first half computes from llava-1.5-7b's config.json; the cells "
            "marked %%real_model (the second half) need the weights and do nothing. To run them, download "
            "llava-hf/llava-1.5-7b-hf (14 GB) and set MINILLAVA_LLAVA_7B to its folder."
        )

    def real_model(line, cell):
        if folder:
            _shell().run_cell(cell).raise_error()

    _register("real_model", real_model)
    return folder


def peak_memory_gib() -> float:
    """The most memory this process has held so far (its peak resident set), in GiB."""
    import resource  # Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def sample_pictures(folder) -> list[Path]:
    """The sample pictures of a checkpoint folder (the demo's are in samples/), in name order."""
    return sorted((Path(folder) / "samples").glob("*.png"))


def reference():
    """Hugging Face Transformers and torch, for the check cells; (None, None) when they are not installed.

    Registers the ``%%needs_transformers`` cell magic either way: with Transformers it runs the cell as usual,
    without it prints one line and runs nothing."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by Transformers
            import torch
            import transformers
    except ImportError:
        transformers = torch = None
        print(
            "Transformers is not installed: the cells marked %%needs_transformers (the checks against it) are "
            'skipped; everything else runs with minillava alone. `pip install -e ".[test]"` runs them too.'
        )
    else:
        transformers.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", message="IProgress not found")
        # torchao (a test dependency, which Transformers imports when it loads a model) logs that its optional GPU
        # kernels cannot load and that torch deprecates one of its registrations: nothing about these notebooks.
        import logging

        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)

    def needs_transformers(line, cell):
        if transformers is None:
            print(SKIPPED)
        else:
            _shell().run_cell(cell).raise_error()

    _register("needs_transformers", needs_transformers)
    return transformers, torch


def _shell():
    """The running IPython shell, or None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _register(name: str, magic) -> None:
    """Register ``magic(line, cell)`` as the cell magic ``%%name`` (nothing to do outside IPython)."""
    if _shell() is not None:
        _shell().register_magic_function(magic, magic_kind="cell", magic_name=name)


def max_diff(a, b) -> str:
    """How far array a is from the reference b (NumPy or torch): the largest |a - b|, and that relative to the
    largest |b| (float32 rounding alone gives ~1e-7 relative)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b).max()
    return "exactly equal" if diff == 0 else f"max |diff| {diff:.1e}, {diff / np.abs(b).max():.0e} relative"


def check_close(what: str, got, expected, rtol: float = 1e-5) -> None:
    """An exercise's check: ``got`` (your answer) must have the shape of ``expected`` (minillava's) and equal it to
    float32 precision: max |got - expected| <= rtol * max |expected|. Prints one line when it does; raises an
    AssertionError that says what differs when it does not."""
    if got is None:
        raise AssertionError(f"{what}: your answer is None (did the cell return or assign it?)")
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: shape {got.shape}, expected {expected.shape}")
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"{what}: your answer has NaN or infinite values")
    diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
    scale = float(np.abs(expected).max()) or 1.0
    if diff > rtol * scale:
        raise AssertionError(f"{what}: max |diff| {diff:.2e} is more than {rtol:g} of the scale {scale:.2e}")
    print(f"✓ {what}: {max_diff(got, expected)}")
