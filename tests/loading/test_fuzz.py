"""The fuzzer of tools/fuzz.py in the suite: a few hundred seeded cases for each door where a user's input enters
(the processor, the safetensors reader, the chat template). Every case must end in success or in one of the
surface's documented errors, and within a time limit. The tool runs the same generators for many more cases (the
README's figures); a failure here prints the seed and case number that reproduce it with the tool."""

import time

import pytest

from minillava.loading.preprocess import ImageProcessorConfig, preprocess

from ..tools import load_tool

fuzz = load_tool("fuzz")

SEED = 1  # the tool's recorded run is seed 0: the suite adds other cases
CASES = 500  # per surface


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return fuzz.Environment(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("surface", fuzz.SURFACES)
def test_random_input_ends_in_success_or_a_documented_error(env, surface):
    tally = fuzz.fuzz(surface, CASES, SEED, env, time_limit=10)
    assert not tally.unexpected and not tally.hangs, "\n" + tally.report()
    assert tally.cases == CASES
    # Both ways out are taken: some inputs are accepted, most are refused with a ValueError.
    assert tally.counts["ok"] >= CASES // 10 and tally.counts["ValueError"] >= CASES // 2, tally.counts


def test_a_case_is_made_again_from_its_seed_and_number(env):
    for surface in fuzz.SURFACES:
        first = [fuzz.make_case(surface, SEED, number, env).description for number in range(20)]
        again = [fuzz.make_case(surface, SEED, number, env).description for number in range(20)]
        assert first == again and len(set(first)) > 10


def test_other_exception_types_and_hangs_are_reported(env, monkeypatch):
    """The fuzzer itself: an exception type the surface does not document (a subclass of a documented one too), a
    documented type not raised by minillava's own `raise` (so with a message nobody wrote for the user) and a case
    that runs past the limit are counted, and reported with the seed and case number that reproduce them."""

    def decode_error():
        b"\xff".decode("utf-8")  # UnicodeDecodeError, a ValueError subclass that names nothing

    cases = iter(
        [
            fuzz.Case("fine", lambda: None),
            fuzz.Case("a KeyError", lambda: {}["missing"]),
            fuzz.Case("refused", lambda: preprocess([], ImageProcessorConfig())),  # minillava's own ValueError
            fuzz.Case("sleeps", lambda: time.sleep(3)),
            fuzz.Case("a UnicodeDecodeError", decode_error),
            fuzz.Case("Python's ValueError", lambda: int("x")),
        ]
    )
    monkeypatch.setitem(fuzz.GENERATORS, "safetensors", lambda rng, env: next(cases))
    start = time.perf_counter()
    tally = fuzz.fuzz("safetensors", 6, seed=7, env=env, time_limit=0.2)
    assert time.perf_counter() - start < 2  # the sleeping case was stopped
    assert dict(tally.counts) == {"ok": 1, "unexpected": 3, "ValueError": 1, "hang": 1}
    assert dict(tally.unexpected_types) == {"KeyError": 1, "UnicodeDecodeError": 1, "ValueError": 1}
    assert [number for number, _, _ in tally.unexpected] == [1, 4, 5]
    assert tally.hangs == [(3, "sleeps")]
    report = tally.report()
    assert "safetensors seed 7 case 1: a KeyError" in report and "KeyError: 'missing' (raised at " in report
    assert "seed 7 case 5: Python's ValueError" in report and "invalid literal for int()" in report
    assert "seed 7 case 3: sleeps" in report and "hang" in report
    head, row = (line.split() for line in fuzz.table([tally]).splitlines())
    assert head[:9] == ["surface", "cases", "ok", "FileNotFoundError", "IsADirectoryError", "TypeError", "ValueError",
                        "unexpected", "hangs"]  # fmt: skip
    assert row[:9] == ["safetensors", "6", "1", "-", "-", "-", "1", "3", "1"]  # "-": not documented for the surface
