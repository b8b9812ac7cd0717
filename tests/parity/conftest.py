"""The parity tests' inputs: the tiny chat checkpoint, three pictures, a left-padded batch of two prompts and
Transformers' trace of it (computed once; each planted bug only reruns minillava, which takes milliseconds on the
tiny checkpoint), and dumps of the same run."""

import numpy as np
import pytest
from PIL import Image

import minillava
from minillava import cli, parity

from .helpers import PROMPTS, run_args


@pytest.fixture(scope="package")
def folder(tiny_checkpoint):
    return tiny_checkpoint("chat", "hub", "float16", True)


@pytest.fixture(scope="package")
def pictures(tmp_path_factory):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 60), (50, 30), (32, 32)]):
        paths.append(tmp_path_factory.mktemp("pics") / f"p{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="package")
def hf(folder):
    """Transformers' LlavaForConditionalGeneration of the folder, loaded by the parity tool."""
    return parity.load_transformers(folder)


@pytest.fixture(scope="package")
def setup(folder, pictures, hf, device):
    """(model, inputs, Transformers' trace) for the padded batch."""
    model, processor = minillava.load_model(folder, device=device), minillava.load_processor(folder)
    images = [Image.open(p) for p in pictures]
    inputs = parity.build_inputs(processor, images, PROMPTS, raw=True)
    assert inputs["attention_mask"].min() == 0  # a padded batch
    reference, error = parity.transformers_trace(hf, model.config, inputs)
    assert error is None
    return model, inputs, reference


@pytest.fixture(scope="package")
def dumps(folder, pictures, tmp_path_factory):
    """Two minillava dumps and a Transformers dump of the same inputs."""
    out = tmp_path_factory.mktemp("dumps")
    paths = {}
    for name, extra in [("a", []), ("b", []), ("hf", ["--source", "transformers"])]:
        paths[name] = out / f"{name}.npz"
        argv = ["parity", "dump", *run_args(folder, pictures)[1:], "--out", str(paths[name]), *extra]
        assert cli.main(argv) == 0
    return paths
