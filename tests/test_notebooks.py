"""The notebooks of the course: they render as Jupyter renders them, run top to bottom, are committed with their
outputs, and their exercises are honest.

Each notebook is executed with nbclient from a copy in memory (outputs cleared), so the committed files are never
written; the kernel's working directory is notebooks/, as when a student opens them there. The kernel runs this
test's own Python (a kernelspec written for the test, so a machine without a registered "python3" kernel, or with
one for another interpreter, runs them the same) with OMP_NUM_THREADS=1. A failing cell fails the test with its
traceback.

Twice each: as committed, with Transformers (every check against it runs), and as a student gets them
(tools/student_notebooks.py: solutions stripped) in a kernel where torch and Transformers cannot be imported. In
that second run each exercise's stub is run, then its check, which must fail; then the solution, then the check,
which must pass. So every check passes on its solution and fails without it, the student version runs up to its
first exercise, and every cell that teaches runs with minillava alone.

Notebook 7 needs the real llava-1.5-7b (MINILLAVA_LLAVA_7B): without it, it shows what it can compute from the
config; one more test runs its other cells on the demo model's folder as a stand-in, so that they cannot rot
unnoticed.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("skimage")  # the cat photo of notebooks 1 and 7
markdown_it = pytest.importorskip("markdown_it")

from .tools import load_tool  # noqa: E402

run_notebooks = load_tool("run_notebooks")
student_notebooks = load_tool("student_notebooks")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
REAL_MODEL = NOTEBOOKS / "07_the_real_model.ipynb"
WITH_EXERCISES = [p for p in PATHS if p != REAL_MODEL]
MAX_BYTES = 2 * 1024 * 1024  # a committed notebook, outputs included
SKIP_MAGIC = "%%needs_transformers"


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
    """A folder with a "python3" kernelspec for this interpreter, single-threaded BLAS/OpenMP."""
    return run_notebooks.write_kernelspec(tmp_path_factory.mktemp("kernels"))


@pytest.fixture(scope="module")
def kernel_dirs_without_torch(tmp_path_factory):
    """The same kernel, but `import torch` and `import transformers` fail as when they are not installed."""
    blocked = tmp_path_factory.mktemp("not_installed")
    for name in ("torch", "transformers"):
        (blocked / name).mkdir()
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is hidden by the test')\n")
    pythonpath = os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return run_notebooks.write_kernelspec(tmp_path_factory.mktemp("kernels"), env={"PYTHONPATH": pythonpath})


@pytest.fixture(scope="module")
def student_folder(tmp_path_factory):
    """The course as a student gets it: tools/student_notebooks.py's output."""
    out = tmp_path_factory.mktemp("course")
    student_notebooks.write_course(out)
    return out


def outputs_of(nb_or_cells, output_type=None) -> list:
    cells = nb_or_cells.cells if hasattr(nb_or_cells, "cells") else nb_or_cells
    return [o for c in cells if c.cell_type == "code" for o in c.outputs if output_type in (None, o.output_type)]


def text_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_the_series_is_complete():
    numbers = [p.name[:2] for p in PATHS]
    assert numbers == ["01", "02", "03", "04", "05", "06", "07", "08", "09"], [p.name for p in PATHS]


# --- What a reader sees ---------------------------------------------------------------------------------------------

BOX_DRAWING = re.compile(r"[─│└├┌┐┘┬┴┼▶◀▼▲]")


def render(source: str) -> str:
    """A markdown cell as Jupyter renders it: CommonMark with GitHub's tables."""
    return markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(source)


def without(html: str, *tags: str) -> str:
    for tag in tags:
        html = re.sub(rf"<{tag}\b.*?</{tag}>", "", html, flags=re.S)
    return html


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_markdown_renders_as_text(path):
    """One title (the only level-1 heading, in the first cell); diagrams in code blocks, not in paragraphs; tables
    as tables; links to other notebooks that exist."""
    nb = nbformat.read(path, as_version=4)
    cells = [(i, render(c.source)) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]
    titles = [(i, h) for i, html in cells for h in re.findall(r"<h1>(.*?)</h1>", html)]
    assert len(titles) == 1 and titles[0][0] == 0, f"{path.name}: level-1 headings {titles} (one title expected)"
    for i, html in cells:
        prose = without(html, "pre", "code", "table")
        assert not BOX_DRAWING.search(prose), f"{path.name}, cell {i}: a diagram outside a code block:\n{prose}"
        assert not re.search(r"^\s*(<p>)?\|.*\|", prose, flags=re.M), f"{path.name}, cell {i}: a table not rendered"
        for target in re.findall(r'href="([^":#]+\.ipynb)', html):
            assert (NOTEBOOKS / target).is_file(), f"{path.name}, cell {i}: link to {target}, which does not exist"


# --- Running them ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel_dirs, monkeypatch):
    """As committed, with Transformers installed: every cell runs, the checks against Transformers included."""
    monkeypatch.delenv("MINILLAVA_LLAVA_7B", raising=False)  # notebook 7 without the weights (see the test below)
    nb = run_notebooks.execute(path, kernel_dirs)
    assert outputs_of(nb), f"{path.name} printed and drew nothing"
    assert not outputs_of(nb, "error")
    skipped = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and course_skip_line(c)]
    assert not skipped, f"{path.name}: cells {skipped} were skipped although Transformers is installed"


def course_skip_line(cell) -> bool:
    return "skipped: this cell checks against Hugging Face Transformers" in text_of(cell)


def test_real_model_notebook_runs_on_a_stand_in(kernel_dirs, monkeypatch):
    """Notebook 7's cells are written for llava-1.5-7b but read every size from the config, so the small model's
    folder runs them all (in seconds) — the same code path as the 7B, minus the wait."""
    from minillava.demo import demo_folder

    stand_in = os.environ.get("MINILLAVA_NOTEBOOK_MODEL") or str(demo_folder())
    monkeypatch.setenv("MINILLAVA_LLAVA_7B", stand_in)
    nb = run_notebooks.execute(REAL_MODEL, kernel_dirs)
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
    assert any("image/png" in o.get("data", {}) for o in outputs_of(nb)), f"{path.name} has no figure"
    if path == REAL_MODEL:  # saved without the 7B: it says so once, and how to get it
        lines = [line for o in outputs_of(nb, "stream") for line in o.text.splitlines() if "MINILLAVA_LLAVA_7B" in line]
        assert len(lines) == 1, f"{path.name} says {len(lines)} times that the weights are absent"


# --- The exercises --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.stem)
def test_notebook_ends_with_two_or_three_exercises(path):
    nb = nbformat.read(path, as_version=4)
    found = student_notebooks.exercises(nb, path.name)  # also: the nbgrader metadata is valid
    assert 2 <= len(found) <= 3, f"{path.name}: {len(found)} exercises"
    first = found[0][0]
    headings = [c.source for c in nb.cells[:first] if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert headings and headings[-1].startswith("## Exercises"), f"{path.name}: exercises not under '## Exercises'"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_student_version_strips_only_the_solutions(path):
    source = nbformat.read(path, as_version=4)
    student = student_notebooks.student_version(source, path.name)
    assert len(student.cells) == len(source.cells)
    assert not outputs_of(student), "the student version has outputs"
    solutions = {i for i, _ in student_notebooks.exercises(source, path.name)}
    for i, (theirs, ours) in enumerate(zip(student.cells, source.cells, strict=True)):
        if i in solutions:
            assert "raise NotImplementedError()" in theirs.source, f"cell {i}: no stub"
            assert "BEGIN SOLUTION" not in theirs.source and theirs.source != ours.source
        elif "BEGIN HIDDEN TESTS" not in ours.source:
            assert theirs.source == ours.source, f"cell {i} differs"


def test_solution_markers_are_checked():
    """A cell with an unclosed solution region, or a region in a cell not marked as a solution, is refused."""
    cell = nbformat.v4.new_code_cell("x = 1\n### BEGIN SOLUTION\nx = 2\n")
    cell.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False, "grade_id": "a"}
    with pytest.raises(ValueError, match="without an 'END SOLUTION'"):
        student_notebooks.student_cell(cell)
    plain = nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 2\n    ### END SOLUTION\n")
    with pytest.raises(ValueError, match="not marked as a solution cell"):
        student_notebooks.student_cell(plain)
    cell.source = "def f():\n    ### BEGIN SOLUTION\n    return 2\n    ### END SOLUTION\n"
    assert student_notebooks.student_cell(cell).source == (
        "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    )


def with_stub_runs(student, source):
    """The student notebook with, after each exercise's stub and check, the source's solution and check again:
    [..., stub, check (must fail), solution, check (must pass), ...]. Returns it and the indices of the
    checks that must fail and of those that must pass."""
    run, must_fail, must_pass = [], [], []
    exercises = student_notebooks.exercises(source)
    checks_of = {solution: checks for solution, checks in exercises}
    check_cells = {i for _, checks in exercises for i in checks}
    for i, cell in enumerate(student.cells):
        if i in check_cells:
            continue  # run with their solution cell, below
        cell = copy.deepcopy(cell)
        if i in checks_of:
            cell.metadata.setdefault("tags", []).append("raises-exception")  # the stub raises NotImplementedError
            run.append(cell)
            for j in checks_of[i]:
                stub_check = copy.deepcopy(student.cells[j])
                stub_check.metadata.setdefault("tags", []).append("raises-exception")
                must_fail.append(len(run))
                run.append(stub_check)
            run.append(copy.deepcopy(source.cells[i]))
            for j in checks_of[i]:
                must_pass.append(len(run))
                run.append(copy.deepcopy(source.cells[j]))
        else:
            run.append(cell)
    nb = copy.deepcopy(student)
    nb.cells = run
    return nb, must_fail, must_pass


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_student_version_without_transformers(path, student_folder, kernel_dirs_without_torch, monkeypatch):
    """The student's copy, with only minillava: the cells that teach run, the Transformers checks say they were
    skipped, each check fails on the stub and passes on the solution."""
    monkeypatch.delenv("MINILLAVA_LLAVA_7B", raising=False)
    source = nbformat.read(path, as_version=4)
    student = nbformat.read(student_folder / path.name, as_version=4)
    nb, must_fail, must_pass = with_stub_runs(student, source)
    nb = run_notebooks.execute_notebook(nb, kernel_dirs_without_torch, student_folder)

    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = outputs_of([cell], "error")
        if i in must_fail:
            assert errors, f"{path.name}: this check passed without a solution (it checks nothing):\n{cell.source}"
        elif i in must_pass:
            assert not errors, f"{path.name}: this check failed on the solution:\n{cell.source}\n{errors}"
        elif "raises-exception" not in cell.metadata.get("tags", []):
            assert not errors, f"{path.name}: cell failed without Transformers:\n{cell.source}\n{errors}"
        if cell.source.startswith(SKIP_MAGIC):
            assert course_skip_line(cell) and not outputs_of([cell], "display_data"), f"{path.name}: not skipped"
    assert any(course_skip_line(c) for c in nb.cells if c.cell_type == "code") or path == REAL_MODEL
