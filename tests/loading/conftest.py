import pytest

from ..fixtures import tiny_tokenizer as tiny
from .processor_folders import FORMS


@pytest.fixture(scope="package")
def folders(tmp_path_factory):
    """Checkpoint folders with the processor files Transformers writes, in several forms (built once for the
    processor and chat-template tests)."""
    root = tmp_path_factory.mktemp("processors")
    return {name: tiny.write_processor_files(root / name, **kwargs) for name, kwargs in FORMS.items()}
