"""The student version of the notebooks: the exercises' solutions stripped, as nbgrader releases an assignment.

The notebooks in notebooks/ are the *source* version of a course, written with nbgrader's conventions so that a
teacher can release and autograde them with nbgrader itself (`nbgrader generate_assignment`, then `autograde`),
or without it with this tool:

- an exercise's **solution cell** has ``metadata.nbgrader`` ``{"solution": true, "grade": false, "grade_id": ...}``;
  the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` are the solution. The student sees
  ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` in their place (nbgrader's stub, indented like the
  marker); a solution cell without markers is replaced whole;
- its **check cell** (autograded test) has ``{"grade": true, "solution": false, "locked": true, "points": N,
  "grade_id": ...}``: it raises when the answer is wrong. Lines between ``### BEGIN HIDDEN TESTS`` and
  ``### END HIDDEN TESTS`` are removed from the student version (kept for grading);
- every other cell is the same in both versions; the student version has no outputs.

This tool writes the student version of every notebook into a folder, with ``course.py`` (the notebooks' shared
setup) and the published config.json of llava-1.5-7b-hf and llava-interleave-qwen-0.5b-hf beside them, so that the
folder is a course a student opens as it is.
tests/test_notebooks.py checks, for each exercise, that its check passes on the solution and fails on the stub.

Usage:  python tools/student_notebooks.py OUT_FOLDER
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CONFIGS = ("llava-1.5-7b-hf", "llava-interleave-qwen-0.5b-hf")  # in tests/data; the notebooks compare with them
COURSE_FILES = ("tools/train_demo.py", "tools/train_stage1.py", "notebooks/data/stage1_run.json")  # notebook 9's

CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"  # nbgrader's stub for Python
BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_solution(cell) -> bool:
    return bool(nbgrader_meta(cell).get("solution", False))


def is_check(cell) -> bool:
    return bool(nbgrader_meta(cell).get("grade", False)) and cell.cell_type == "code"


def _replace_regions(source: str, begin: str, end: str, stub: str | None, where: str) -> tuple[str, bool]:
    """``source`` with each region from a line containing ``begin`` to one containing ``end`` replaced by ``stub``
    (indented like the begin line; None: removed). Returns (new source, whether a region was found)."""
    out, inside, found = [], False, False
    for line in source.split("\n"):
        if begin in line:
            if inside:
                raise ValueError(f"{where}: '{begin}' inside another '{begin}' region")
            inside = found = True
            indent = re.match(r"\s*", line).group(0)
            out += [indent + s for s in stub.split("\n")] if stub is not None else []
        elif end in line:
            if not inside:
                raise ValueError(f"{where}: '{end}' without a '{begin}' before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: '{begin}' without an '{end}' after it")
    return "\n".join(out), found


def student_cell(cell, where: str = "cell"):
    """The student's copy of one cell: solution regions stubbed, hidden tests removed, no outputs."""
    cell = copy.deepcopy(cell)
    if cell.cell_type == "code":
        cell.source, replaced = _replace_regions(cell.source, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB, where)
        if replaced and not is_solution(cell):
            raise ValueError(f"{where}: a solution region in a cell not marked as a solution cell")
        if is_solution(cell) and not replaced:
            cell.source = CODE_STUB
        if is_check(cell):
            cell.source, _ = _replace_regions(cell.source, BEGIN_HIDDEN, END_HIDDEN, None, where)
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    return cell


def exercises(nb, name: str = "notebook") -> list[tuple[int, list[int]]]:
    """The exercises of a source notebook: [(index of the solution cell, [indices of its check cells])], each
    check cell belonging to the solution cell before it. Raises ValueError where the nbgrader metadata is not
    what nbgrader accepts (a missing or repeated grade_id, a check without points) or a solution has no check."""
    found, ids = [], set()
    for i, cell in enumerate(nb.cells):
        meta = nbgrader_meta(cell)
        if not meta:
            continue
        where = f"{name}, cell {i}"
        grade_id = meta.get("grade_id")
        if not grade_id:
            raise ValueError(f"{where}: nbgrader cell without a grade_id")
        if grade_id in ids:
            raise ValueError(f"{where}: grade_id {grade_id!r} used twice")
        ids.add(grade_id)
        if meta.get("schema_version") != 3:
            raise ValueError(f"{where}: nbgrader schema_version must be 3")
        if is_solution(cell):
            if cell.cell_type != "code":
                raise ValueError(f"{where}: written answers (markdown solution cells) are not used in this course")
            found.append((i, []))
        elif is_check(cell):
            if "points" not in meta:
                raise ValueError(f"{where}: check cell {grade_id!r} without points")
            if not found:
                raise ValueError(f"{where}: check cell {grade_id!r} before any solution cell")
            found[-1][1].append(i)
    for i, checks in found:
        if not checks:
            raise ValueError(f"{name}, cell {i}: solution cell without a check cell after it")
    return found


def student_version(nb, name: str = "notebook"):
    """The student version of a source notebook (a new notebook; the source is not changed)."""
    exercises(nb, name)  # the metadata is valid
    student = copy.deepcopy(nb)
    student.cells = [student_cell(cell, f"{name}, cell {i}") for i, cell in enumerate(nb.cells)]
    return student


def write_course(out: Path) -> list[Path]:
    """Write the student version of every notebook into ``out``, with course.py, the CONFIGS and the COURSE_FILES
    beside them."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.write(student_version(nb, path.name), out / path.name)
        written.append(out / path.name)
    shutil.copy(NOTEBOOKS / "course.py", out / "course.py")
    for relative in COURSE_FILES:  # what notebook 9 reads beyond the package, where course.repository() looks
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, out / relative)
    for name in CONFIGS:
        (out / name).mkdir(exist_ok=True)
        shutil.copy(ROOT / "tests" / "data" / name / "config.json", out / name / "config.json")
    return written


def main() -> None:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder to write the student notebooks into")
    args = parser.parse_args()
    if args.out.resolve() == NOTEBOOKS.resolve():
        sys.exit("student_notebooks: OUT_FOLDER must not be notebooks/ (it would overwrite the solutions)")
    try:
        written = write_course(args.out)
    except ValueError as error:
        sys.exit(f"student_notebooks: {error}")
    for path in written:
        n = len(exercises(nbformat.read(NOTEBOOKS / path.name, as_version=4)))
        print(f"{path}: {n} exercise{'s' if n != 1 else ''}")


if __name__ == "__main__":
    main()
