"""minillava: LLaVA-1.5 in plain NumPy/CuPy, readable top to bottom and tested against Transformers.

Usage::

    import minillava
    model = minillava.load_model("path/to/llava-1.5-7b-hf")
    processor = minillava.load_processor("path/to/llava-1.5-7b-hf")
    logits = model.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)

The package has four parts, and the arrows between them run one way:

    model/     the math, one file per step of the data flow, and the glue that composes them (llava.py)
               and generation's loop (generate.py): what a student reads, top to bottom
    loading/   files -> the model's inputs: config.json, safetensors, image preprocessing, tokenizer and
               chat template, the processor, load_model           (imports model/)
    parity/    the parity tool: compare two implementations module by module   (imports model/, loading/)
    cli.py     the command line                                   (imports the others)
"""

from importlib import import_module

__version__ = "0.1.0"

# The public names and the modules that define them. They are imported on first use (a module-level __getattr__,
# PEP 562), so that `import minillava` costs nothing until a name is used: the command line then answers --help,
# a bad flag or Ctrl-C at once, before NumPy, Pillow and tokenizers load. The first use of any name imports all of
# them, exactly what a plain list of `from ... import ...` lines here would do.
PUBLIC = {
    "KVCache": "minillava.model.kv_cache",
    "LlavaConfig": "minillava.model.config",
    "LlavaModel": "minillava.model.llava",
    "LlavaProcessor": "minillava.loading.processor",
    "load_config": "minillava.loading.config",
    "load_model": "minillava.loading.checkpoint",
    "load_processor": "minillava.loading.processor",
}
__all__ = sorted(PUBLIC)


def __getattr__(name: str):
    for public, module in PUBLIC.items():  # also makes minillava.model, minillava.loading, ... attributes
        globals()[public] = getattr(import_module(module), public)
    if name not in globals():
        raise AttributeError(f"module 'minillava' has no attribute {name!r}")
    return globals()[name]


def __dir__():
    return sorted(set(globals()) | set(__all__))
