"""Recording named intermediate activations.

Model functions take an optional ``trace``: ``None`` (the default: nothing is recorded and nothing
is copied), a dict (each activation is stored under its name), or a callable ``trace(name, value)``.
Names follow the Transformers module paths of the submodule whose output the value equals
(``vision_tower.encoder.layers.3``, ``language_model.layers.10.mlp``), so parity checks against
forward hooks are mechanical.
"""

from __future__ import annotations


def record(trace, name: str, value) -> None:
    """Give ``value`` to ``trace`` under ``name`` (a no-op when trace is None)."""
    if trace is None:
        return
    if callable(trace):
        trace(name, value)
    else:
        trace[name] = value
