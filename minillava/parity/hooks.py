"""The two sides of a comparison: minillava run with its ``trace``, and Transformers'
``LlavaForConditionalGeneration`` run with forward hooks on the submodules of the same names.

Transformers and torch are optional: they are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib

import numpy as np

from ..model import backend
from ..model.trace import activation_names
from .compare import DTYPE_NAMES, INPUT_NAMES, ParityError


def minillava_trace(model, inputs) -> tuple[dict, str | None]:
    """Run minillava with tracing; -> ({name: float32 NumPy array, plus the int inputs}, error or None).

    An exception inside the forward (e.g. a shape error from a bug) ends the run; the entries
    recorded before it are kept and the error is returned as text.
    """
    trace, error = {}, None
    try:
        model.forward(
            inputs["input_ids"],
            pixel_values=inputs.get("pixel_values"),
            attention_mask=inputs.get("attention_mask"),
            trace=trace,
        )
    except Exception as err:  # a broken forward still gives its partial trace
        error = f"minillava stopped with {type(err).__name__}: {err}"
    out = {name: np.asarray(inputs[name]) for name in INPUT_NAMES if name in inputs}
    out.update({name: backend.to_numpy(value).astype(np.float32) for name, value in trace.items()})
    return out, error


def import_transformers():
    """(torch, transformers), or a ParityError saying how to install them."""
    try:
        return importlib.import_module("torch"), importlib.import_module("transformers")
    except ImportError as err:
        raise ParityError(
            f"Transformers/torch not installed ({err}): `pip install torch transformers` to compare with them"
        ) from None


def load_transformers(folder, dtype: str = "fp32"):
    """LlavaForConditionalGeneration from a checkpoint folder in fp32/fp16/bf16, eval mode, on the CPU."""
    torch, transformers = import_transformers()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar between the report lines
    try:
        hf = transformers.LlavaForConditionalGeneration.from_pretrained(
            folder, dtype=getattr(torch, DTYPE_NAMES[dtype])
        )
    except Exception as err:
        raise ParityError(f"Transformers could not load {folder}: {type(err).__name__}: {err}") from None
    return hf.eval()


def transformers_trace(hf, config, inputs) -> tuple[dict, str | None]:
    """Run a Transformers LlavaForConditionalGeneration with forward hooks; same return as minillava_trace.

    config: minillava's LlavaConfig of the checkpoint (which vision layers LLaVA uses).
    """
    torch = importlib.import_module("torch")
    dtype = next(hf.parameters()).dtype
    with_images = inputs.get("pixel_values") is not None
    modules = dict(hf.named_modules())
    captured, handles = {}, []

    def keep(name, value):
        if name not in captured and torch.is_tensor(value):  # the first call (each runs once)
            captured[name] = value.detach().to(torch.float32).cpu().numpy().copy()

    def output_hook(name):
        return lambda module, args, output: keep(name, output[0] if isinstance(output, tuple) else output)

    for name in activation_names(config, with_images):
        path = "lm_head" if name == "lm_head" else f"model.{name}"
        if path in modules:
            handles.append(modules[path].register_forward_hook(output_hook(name)))
    if with_images and "model.multi_modal_projector" in modules:  # the features HF selected from CLIP's hidden_states
        pre = lambda module, args: keep("vision_features", args[0])  # noqa: E731
        handles.append(modules["model.multi_modal_projector"].register_forward_pre_hook(pre))
    if "model.language_model" in modules:
        pre = lambda module, args, kwargs: keep("inputs_embeds", kwargs.get("inputs_embeds"))  # noqa: E731
        handles.append(modules["model.language_model"].register_forward_pre_hook(pre, with_kwargs=True))

    pixel_values = torch.from_numpy(np.asarray(inputs["pixel_values"])).to(dtype) if with_images else None
    error = None
    try:
        with torch.no_grad():
            hf(
                input_ids=torch.from_numpy(np.asarray(inputs["input_ids"])),
                attention_mask=torch.from_numpy(np.asarray(inputs["attention_mask"])),
                pixel_values=pixel_values,
                # Transformers 5.24 asks CLIP for `output_hidden_states=vision_feature_layer`, which
                # is falsy for layer 0 (then it crashes); asking for all changes no number.
                output_hidden_states=True,
            )
    except Exception as err:
        error = f"Transformers stopped with {type(err).__name__}: {err}"
    finally:
        for handle in handles:
            handle.remove()
    out = {name: np.asarray(inputs[name]) for name in INPUT_NAMES}
    if with_images:
        out["pixel_values"] = pixel_values.to(torch.float32).numpy()  # as Transformers got them (its dtype)
    out.update(captured)
    return out, error
