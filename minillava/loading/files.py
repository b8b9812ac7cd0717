"""Reading a checkpoint folder's JSON files: one reader, one kind of error.

A llava-hf folder holds several small JSON files beside its weights (config.json, generation_config.json,
tokenizer_config.json, processor_config.json or preprocessor_config.json, chat_template.json,
model.safetensors.index.json). Each is read here, so that a broken one is always reported the same way:
one ValueError naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: str | Path, required: bool = False) -> dict:
    """The JSON object in the file ``path``; {} when the file does not exist and is not ``required``.

    Raises FileNotFoundError for a required file that is missing, ValueError for a file that is not UTF-8
    JSON or holds something other than an object."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: no such file")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:  # Python's parser recurses once per [ or {: no llava-hf file nests more than a few deep
        raise ValueError(f"{path}: JSON nested too deeply to be a checkpoint's file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object, got a JSON {type(data).__name__}")
    return data


def is_json_int(value) -> bool:
    """An int from a JSON file: JSON's true and false are Python ints too, but never a count, a size or an id."""
    return isinstance(value, int) and not isinstance(value, bool)
