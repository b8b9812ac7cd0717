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

from .loading.checkpoint import load_model
from .loading.config import load_config
from .loading.processor import LlavaProcessor, load_processor
from .model.config import LlavaConfig
from .model.kv_cache import KVCache
from .model.llava import LlavaModel

__all__ = ["KVCache", "LlavaConfig", "LlavaModel", "LlavaProcessor", "load_config", "load_model", "load_processor"]
__version__ = "0.1.0"
