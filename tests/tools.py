"""The one way a test loads a script of tools/ (the tests of the tools themselves: the demo's trainer, the
notebook runner, the student-version writer), without putting tools/ on sys.path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str):
    """tools/<name>.py as a module, loaded once and registered in sys.modules under ``name`` (the dataclasses
    of a tool look their module up there)."""
    path = TOOLS / f"{name}.py"
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "")) == path:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
