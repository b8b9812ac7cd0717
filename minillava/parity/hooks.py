"""The two sides of a comparison: minillava run with its ``trace``, and Transformers'
``LlavaForConditionalGeneration`` run with forward hooks on the submodules of the same names; and, for
``parity generate`` and ``parity batch``, each side's logits and greedy generation with every step's logits.

Transformers and torch are optional: they are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib

import numpy as np

from ..model import backend, generate
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


# ---------------------------------------------------------------------------------------------
# Logits and greedy generation, each step's logits kept (parity generate, parity batch)
# ---------------------------------------------------------------------------------------------


def minillava_logits(model, inputs):
    """minillava's forward: logits [B, T, V] float32 NumPy."""
    try:
        logits = model.forward(inputs["input_ids"], inputs.get("pixel_values"), inputs.get("attention_mask"))
    except Exception as err:  # as minillava_greedy
        raise ParityError(f"minillava stopped with {type(err).__name__}: {err}") from None
    return logits.astype(np.float32)  # [B, T, V]


def minillava_greedy(model, inputs, max_new_tokens: int):
    """Greedy generation as ``model.generate`` runs it (generate.py's loop, the model's step and cache), with a
    step function that keeps what it returns -> (tokens [B, n] int64, logits of each step [n, B, V] float32).

    inputs come from the processor (``build_inputs``), so they are valid; ``encode_image`` checks the pixels."""
    step_logits = []

    def step(*args):
        logits = model.step(*args)  # [B, V] on the device
        step_logits.append(backend.to_numpy(logits).astype(np.float32))
        return logits

    input_ids = np.asarray(inputs["input_ids"])  # [B, T]
    attention_mask = np.asarray(inputs["attention_mask"]).astype(np.int64)  # [B, T]
    B, T = input_ids.shape
    context = model.config.text.max_position_embeddings
    if T >= context:  # as model.generate refuses it
        raise ParityError(f"the prompt has {T} tokens, the model's context (max_position_embeddings) is {context}")
    settings = {**generate.SETTINGS_DEFAULTS, "max_new_tokens": max_new_tokens}  # do_sample False: greedy
    special = {
        "eos_token_id": model.generation_defaults.eos_token_id,
        "pad_token_id": model.generation_defaults.pad_token_id,
    }
    try:
        pixel_values = inputs.get("pixel_values")
        image_features = None if pixel_values is None else model.encode_image(pixel_values)  # [N, L, D]
        cache = model.new_cache(B, min(T + max_new_tokens, context))
        tokens = list(
            generate.generate_tokens(step, cache, input_ids, attention_mask, image_features, **settings, **special)
        )
    except Exception as err:  # a bug in a planted or changed module: one line, as the trace reports it
        raise ParityError(f"minillava stopped with {type(err).__name__}: {err}") from None
    return np.stack(tokens, axis=1), np.stack(step_logits[: len(tokens)])  # [B, n], [n, B, V]


def _torch_inputs(hf, inputs) -> dict:
    torch = importlib.import_module("torch")
    dtype = next(hf.parameters()).dtype
    out = {name: torch.from_numpy(np.asarray(inputs[name])) for name in INPUT_NAMES}
    if inputs.get("pixel_values") is not None:
        out["pixel_values"] = torch.from_numpy(np.asarray(inputs["pixel_values"])).to(dtype)
    return out


def transformers_logits(hf, inputs):
    """Transformers' forward: logits [B, T, V] float32 NumPy."""
    torch = importlib.import_module("torch")
    try:
        with torch.no_grad():
            logits = hf(**_torch_inputs(hf, inputs)).logits  # [B, T, V]
    except Exception as err:
        raise ParityError(f"Transformers stopped with {type(err).__name__}: {err}") from None
    return logits.to(torch.float32).numpy()


def transformers_greedy(hf, inputs, max_new_tokens: int, pad_token_id=None):
    """Transformers' greedy ``generate`` with the raw logits of each step -> (tokens [B, n] int64,
    logits [n, B, V] float32). ``pad_token_id``: what a finished row emits (minillava's, so both pad alike)."""
    torch = importlib.import_module("torch")
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
    if pad_token_id is not None:
        settings["pad_token_id"] = pad_token_id
    try:
        with torch.no_grad():
            out = hf.generate(**_torch_inputs(hf, inputs), **settings)
    except Exception as err:
        raise ParityError(f"Transformers stopped with {type(err).__name__}: {err}") from None
    T = np.asarray(inputs["input_ids"]).shape[1]
    tokens = out.sequences[:, T:].numpy().astype(np.int64)  # [B, n]
    return tokens, np.stack([step.to(torch.float32).numpy() for step in out.logits])  # [B, n], [n, B, V]
