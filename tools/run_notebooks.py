"""Execute the notebooks in notebooks/ top to bottom and save them with their outputs.

Run it whenever what the notebooks show changes (the demo model retrained, a function renamed): the committed
notebooks carry the outputs of one clean run, so that GitHub shows the figures without running anything.
tests/test_notebooks.py executes them with the same ``execute`` (without saving).

Each notebook runs from a copy with its outputs cleared, in notebooks/ (as when a student opens it there), in a
kernel of this interpreter with OMP_NUM_THREADS=1. Notebook 7 is saved as it runs without the real 7B
(MINILLAVA_LLAVA_7B is unset for the run): the line that says how to get it.

Usage:  python tools/run_notebooks.py [NAME ...]     # all of them, or the named ones (e.g. 04_the_llama_block)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 300  # seconds per cell


def write_kernelspec(folder: Path, env: dict | None = None) -> list[str]:
    """A "python3" kernelspec for this interpreter with single-threaded BLAS/OpenMP (and ``env``) in ``folder``;
    returns the kernel_dirs list for jupyter_client's KernelSpecManager."""
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (minillava)",
        "language": "python",
        "env": {"OMP_NUM_THREADS": "1", **(env or {})},
    }
    (folder / "python3").mkdir(parents=True, exist_ok=True)
    (folder / "python3" / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return [str(folder)]


def execute(path: Path, kernel_dirs: list[str]):
    """Run a fresh copy of the notebook (outputs cleared) in notebooks/; return it with its new outputs.

    Raises nbclient's CellExecutionError (the cell and its traceback) when a cell fails."""
    import nbformat

    return execute_notebook(nbformat.read(path, as_version=4), kernel_dirs, NOTEBOOKS)


def execute_notebook(nb, kernel_dirs: list[str], cwd: Path):
    """Run the notebook ``nb`` (its outputs cleared first) with ``cwd`` as the kernel's working directory; return
    it with its new outputs. A cell tagged "raises-exception" may fail; any other failing cell raises nbclient's
    CellExecutionError."""
    import nbclient
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)  # timestamps of an earlier run
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        record_timing=False,  # no timestamps in the saved cells' metadata
    )
    client.execute()
    return nb


def main() -> None:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    args = parser.parse_args()
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.names:
        paths = [p for p in paths if p.stem in args.names or p.name in args.names]
        if not paths:
            sys.exit(f"run_notebooks: no notebook named {args.names}")
    os.environ.pop("MINILLAVA_LLAVA_7B", None)
    with tempfile.TemporaryDirectory() as tmp:
        kernel_dirs = write_kernelspec(Path(tmp))
        for path in paths:
            start = time.time()
            nb = execute(path, kernel_dirs)
            nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
            nbformat.write(nb, path)
            print(f"{path.name}: {time.time() - start:.0f} s, {path.stat().st_size / 1e3:.0f} kB", flush=True)


if __name__ == "__main__":
    main()
