"""minillava: LLaVA-1.5 in plain NumPy/CuPy, readable top to bottom and tested against Transformers.

Usage::

    import minillava
    model = minillava.load_model("path/to/llava-1.5-7b-hf")
    logits = model.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
"""

from .config import LlavaConfig, load_config
from .kv_cache import KVCache
from .model import LlavaModel, load_model
from .processor import LlavaProcessor, load_processor

__all__ = ["KVCache", "LlavaConfig", "LlavaModel", "LlavaProcessor", "load_config", "load_model", "load_processor"]
__version__ = "0.1.0"
