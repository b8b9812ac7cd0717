"""The demo model bundled with minillava: a small LLaVA-1.5-architecture model trained by
tools/train_demo.py on synthetic pictures of shapes, saved here in the llava-hf folder layout, with
sample pictures in samples/. It is what ``load_model()`` and ``load_processor()`` load when no
checkpoint is named."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def demo_folder() -> Path:
    """The bundled demo checkpoint folder (a clear error if the package was installed without it)."""
    if not (FOLDER / "config.json").is_file():
        raise FileNotFoundError(
            f"the bundled demo model is missing from {FOLDER} (rebuild it with `python tools/train_demo.py`, "
            f"or give a checkpoint folder)"
        )
    return FOLDER
