"""The step-through notebooks in notebooks/ run top to bottom, and the committed ones carry their outputs.

Each notebook is executed with nbclient from a copy in memory (outputs cleared), so the committed files are never
written; the kernel's working directory is notebooks/, as when a student opens them there. The kernel runs this
test's own Python (a kernelspec written for the test, so a machine without a registered "python3" kernel, or with
one for another interpreter, runs them the same) with OMP_NUM_THREADS=1. A failing cell fails the test with its
traceback.

Notebook 7 needs the real llava-1.5-7b (MINILLAVA_LLAVA_7B): without it, it explains and skips its cells; one more
test runs those cells on the demo model's folder as a stand-in, so that they cannot rot unnoticed.

Measured on 2 cores: about 70 s for the whole series.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("skimage")  # the cat photo of notebooks 1 and 7

import run_notebooks  # noqa: E402  (tools/ is on sys.path: conftest.py)

ROOT = Path(__file__).resolve().parents[1]


NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
REAL_MODEL = NOTEBOOKS / "07_the_real_model.ipynb"
MAX_BYTES = 2 * 1024 * 1024  # a committed notebook, outputs included


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
    """A folder with a "python3" kernelspec for this interpreter, single-threaded BLAS/OpenMP."""
    return run_notebooks.write_kernelspec(tmp_path_factory.mktemp("kernels"))


def execute(path: Path, kernel_dirs) -> nbformat.NotebookNode:
    """Run a fresh copy of the notebook (outputs cleared) in notebooks/; return it with its new outputs (the
    committed file is not written: tools/run_notebooks.py does that)."""
    return run_notebooks.execute(path, kernel_dirs)


def outputs_of(nb, output_type=None) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if output_type in (None, o.output_type)]


def test_the_series_is_complete():
    assert [p.name[:2] for p in PATHS] == ["01", "02", "03", "04", "05", "06", "07"], [p.name for p in PATHS]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel_dirs, monkeypatch):
    monkeypatch.delenv("MINILLAVA_LLAVA_7B", raising=False)  # notebook 7 explains and skips (see the test below)
    nb = execute(path, kernel_dirs)
    assert outputs_of(nb), f"{path.name} printed and drew nothing"
    assert not outputs_of(nb, "error")


def test_real_model_notebook_runs_on_a_stand_in(kernel_dirs, monkeypatch):
    """Notebook 7's cells are written for llava-1.5-7b but read every size from the config, so the small model's
    folder runs them all (in seconds) — the same code path as the 7B, minus the wait."""
    from minillava.demo import demo_folder

    stand_in = os.environ.get("MINILLAVA_NOTEBOOK_MODEL") or str(demo_folder())
    monkeypatch.setenv("MINILLAVA_LLAVA_7B", stand_in)
    nb = execute(REAL_MODEL, kernel_dirs)
    code = [c for c in nb.cells if c.cell_type == "code"]
    skipped = [i for i, c in enumerate(code) if c.source.startswith("%%real_model") and not c.outputs]
    assert not skipped, f"cells {skipped} of {REAL_MODEL.name} printed nothing: were they skipped?"
    assert any("image/png" in o.get("data", {}) for o in outputs_of(nb)), "no figure drawn"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_committed_notebook_has_outputs_and_is_small(path):
    """Committed with the outputs of one clean run (so GitHub shows the figures without running anything)."""
    size = path.stat().st_size
    assert size <= MAX_BYTES, f"{path.name} is {size / 2**20:.2f} MB, more than 2 MB: smaller figures or dpi"
    nb = nbformat.read(path, as_version=4)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert None not in counts and counts == sorted(counts), f"{path.name}: not saved from one top-to-bottom run"
    assert not outputs_of(nb, "error"), f"{path.name} was saved with an error in it"
    if path == REAL_MODEL:  # without the 7B: the one line saying how to get it
        assert "MINILLAVA_LLAVA_7B" in "".join(o.get("text", "") for o in outputs_of(nb, "stream"))
    else:
        assert any("image/png" in o.get("data", {}) for o in outputs_of(nb)), f"{path.name} has no figure"
