"""How load_model holds the weights (minillava.loading.memory): float32 in RAM when they fit in the memory
available, else the file's dtype memory-mapped, else one clear error before any weight is read. The machine's
memory is replaced by a budget (memory_budget=...), so each case is the same on every machine."""

import numpy as np
import pytest

import minillava
from minillava.loading import checkpoint, memory
from minillava.loading.memory import RESERVE, GiB, parse_budget, plan_memory, weight_bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [(12_000_000_000, 12 * 10**9), ("12GB", 12 * 10**9), ("12 GiB", 12 * GiB), ("800MB", 800 * 10**6),
     ("1.5GiB", int(1.5 * GiB)), ("4096", 4096), ("2tb", 2 * 10**12)],
)  # fmt: skip
def test_budgets(value, expected):
    assert parse_budget(value) == expected


@pytest.mark.parametrize("value", ["lots", "-1GB", "0", 0, -5, True, None, "12 GX"])
def test_bad_budgets_name_the_value(value):
    with pytest.raises(ValueError, match=r"memory_budget must be .* got"):
        parse_budget(value)


def test_weight_bytes_in_ram_and_at_rest():
    shapes = {"a": (1000, 10), "b": (10,), "lm_head.weight": (1000, 10)}
    dtypes = {"a": "F16", "b": "BF16"}  # lm_head is tied: no tensor of its own
    in_ram, at_rest = weight_bytes(shapes, dtypes, "float32")
    assert in_ram == 10_010 * 4
    assert at_rest == 10_000 * 2 + 10 * 4  # bfloat16 is decoded to float32 when it is read
    assert weight_bytes(shapes, dtypes, "float16")[0] == 10_010 * 2


def test_the_plan():
    in_ram, at_rest = 8 * GiB, 4 * GiB
    fits = plan_memory(in_ram, at_rest, None, budget=in_ram + RESERVE)
    assert not fits.low_memory and "in RAM" in fits.message and fits.announce
    mapped = plan_memory(in_ram, at_rest, None, budget=in_ram + RESERVE - 1)
    assert mapped.low_memory and "memory-mapped" in mapped.message and "8.0 GiB" in mapped.message
    with pytest.raises(MemoryError, match=r"need 4\.0 GiB even kept in the file's dtype .* 5\.0 GiB: .*quantize"):
        plan_memory(in_ram, at_rest, None, budget=at_rest + RESERVE - 1)
    assert plan_memory(in_ram, at_rest, True, budget=at_rest + RESERVE).low_memory  # asked for, and it fits
    with pytest.raises(MemoryError, match=r"low_memory=False asks for .* 8\.0 GiB"):
        plan_memory(in_ram, at_rest, False, budget=in_ram)
    assert not plan_memory(1000, 500, None, budget="64GB").announce  # a small checkpoint loads silently


def test_the_machine_is_asked_when_there_is_no_budget(monkeypatch):
    monkeypatch.setattr(memory, "memory_info", lambda: (3 * GiB, 6 * GiB))
    assert plan_memory(4 * GiB, 2 * GiB, None).low_memory
    assert not plan_memory(GiB, GiB // 2, None).low_memory
    with pytest.raises(MemoryError, match="this machine has 6.0 GiB"):
        plan_memory(12 * GiB, 6 * GiB, None)


def test_memory_info_of_this_machine():
    available, total = memory.memory_info()
    assert total is None or (total > 0 and (available is None or 0 < available <= total))


def test_load_model_follows_the_plan(tiny_checkpoint, monkeypatch, capsys):
    """A float16 checkpoint: in RAM as float32 when the budget allows, memory-mapped float16 when it does not
    (and it says so), refused before any weight is read when even that cannot fit."""
    folder = tiny_checkpoint("base", "hub", "float16", True)
    capsys.readouterr()  # building the checkpoint on a clean clone prints Transformers' progress bar
    weight = lambda model: model.params["language_model"]["layers"][0]["mlp"]["up_proj"]["weight"]  # noqa: E731

    roomy = minillava.load_model(folder, memory_budget="64GB")
    assert weight(roomy).dtype == np.float32 and capsys.readouterr().err == ""

    in_ram, at_rest = weight_bytes(checkpoint.expected_shapes(roomy.config), checkpoint.file_dtypes(folder), "float32")
    tight = minillava.load_model(folder, memory_budget=in_ram + RESERVE - 1)
    assert weight(tight).dtype == np.float16 and isinstance(weight(tight), np.memmap)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "memory-mapped" in err and str(folder) in err
    np.testing.assert_array_equal(
        roomy.forward(np.array([[1, 5, 7]])), tight.forward(np.array([[1, 5, 7]]))
    )  # the same numbers either way

    def must_not_read(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(checkpoint, "load_weights", must_not_read)
    with pytest.raises(MemoryError, match="the memory budget has"):
        minillava.load_model(folder, memory_budget=at_rest + RESERVE - 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"low_memory": "yes"}, "low_memory must be None"), ({"quantize": "int3"}, r"quantize must be .*'int3'"),
     ({"attn_implementation": "flash"}, r"attn_implementation must be one of .*'flash'"),
     ({"memory_budget": "lots"}, "memory_budget must be")],
)  # fmt: skip
def test_bad_loading_options_name_the_value_and_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        minillava.load_model(**kwargs)


def test_the_command_line_reports_a_budget_too_small(capsys):
    from minillava import cli
    from minillava.demo import demo_folder

    picture = demo_folder() / "samples" / "0_colour.png"
    assert cli.main(["--image", str(picture), "--memory-budget", "10MB"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the memory budget has" in err
