"""Ollama `options`: defaults, types, removed and unknown keys, special values."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ax_llm_provider.engine import options as options_mod
from ax_llm_provider.engine.options import (
    NO_EFFECT_OPTIONS,
    OPTION_NAMES,
    REMOVED_OPTIONS,
    GenerationOptions,
    InvalidOptionError,
    parse_options,
)

# api.DefaultOptions() of the Ollama server (num_ctx: the <24 GiB tier)
OLLAMA_DEFAULTS = {
    "num_predict": -1, "num_keep": 4, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0,
    "typical_p": 1.0, "repeat_last_n": 64, "repeat_penalty": 1.0, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "seed": -1, "stop": (), "num_ctx": 4096, "num_batch": 512,
    "num_gpu": -1, "main_gpu": None, "use_mmap": None, "num_thread": 0, "draft_num_predict": 4,
}
INT_OPTIONS = ["num_ctx", "num_batch", "num_gpu", "num_thread", "draft_num_predict", "num_keep",
               "seed", "num_predict", "top_k", "repeat_last_n", "main_gpu"]
FLOAT_OPTIONS = ["top_p", "min_p", "typical_p", "temperature", "repeat_penalty",
                 "presence_penalty", "frequency_penalty"]
INSTALLATION = {"num_predict": 100, "temperature": 0.99, "top_k": 85, "top_p": 0.9,
                "repeat_penalty": 1.5, "repeat_last_n": 64, "stop": ["#", "["]}


@pytest.fixture(autouse=True)
def _fresh_warnings():
    options_mod._reset_warnings()
    yield
    options_mod._reset_warnings()


def test_defaults_are_ollamas():
    opts, warnings = parse_options(None)
    assert warnings == []
    assert opts.model_dump() == OLLAMA_DEFAULTS


def test_every_option_of_the_parity_table_is_a_field():
    assert set(OLLAMA_DEFAULTS) == OPTION_NAMES
    assert NO_EFFECT_OPTIONS <= OPTION_NAMES
    assert not REMOVED_OPTIONS & OPTION_NAMES


def test_installation_options_parse():
    opts, warnings = parse_options(INSTALLATION)
    assert warnings == []
    assert (opts.num_predict, opts.temperature, opts.top_k, opts.top_p) == (100, 0.99, 85, 0.9)
    assert (opts.repeat_penalty, opts.repeat_last_n, opts.stop) == (1.5, 64, ("#", "["))
    assert opts.model_fields_set == set(INSTALLATION)


@pytest.mark.parametrize("name", INT_OPTIONS)
def test_integer_options_accept_integral_floats(name):
    opts, _ = parse_options({name: 7.0})  # JSON numbers may arrive as floats
    assert getattr(opts, name) == 7 and isinstance(getattr(opts, name), int)


@pytest.mark.parametrize("name", INT_OPTIONS)
@pytest.mark.parametrize("value", ["40", 1.5, True, float("nan"), float("inf"), [1], {"a": 1}])
def test_integer_options_reject_other_types(name, value):
    with pytest.raises(InvalidOptionError) as info:
        parse_options({name: value})
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.option, err.expected) == (name, "integer")
    assert f'option "{name}" must be of type integer' in str(err) and repr(value) in str(err)


@pytest.mark.parametrize("name", FLOAT_OPTIONS)
def test_float_options_accept_ints(name):
    opts, _ = parse_options({name: 2})
    assert getattr(opts, name) == 2.0 and isinstance(getattr(opts, name), float)


@pytest.mark.parametrize("name", FLOAT_OPTIONS)
@pytest.mark.parametrize("value", ["0.5", False, {"a": 1}, [0.5]])
def test_float_options_reject_strings_and_bools(name, value):
    with pytest.raises(InvalidOptionError, match=f'option "{name}" must be of type number'):
        parse_options({name: value})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_float_options_reject_non_finite(value):
    with pytest.raises(InvalidOptionError, match="finite number"):
        parse_options({"temperature": value})


def test_use_mmap_is_a_strict_boolean():
    assert parse_options({"use_mmap": False})[0].use_mmap is False
    with pytest.raises(InvalidOptionError, match='"use_mmap" must be of type boolean'):
        parse_options({"use_mmap": 1})


@pytest.mark.parametrize(("raw", "expected"), [
    ("#", ("#",)),
    (["#", "["], ("#", "[")),
    (("a", "b"), ("a", "b")),
    (["#", "", "#", "x"], ("#", "x")),  # "" would stop at once; duplicates dropped
    ([], ()),
])
def test_stop_accepts_a_string_or_a_list(raw, expected):
    assert parse_options({"stop": raw})[0].stop == expected


@pytest.mark.parametrize("raw", [["a", 1], 3, {"a": "b"}, [None]])
def test_stop_rejects_non_strings(raw):
    with pytest.raises(InvalidOptionError, match="string or array of strings"):
        parse_options({"stop": raw})


def test_null_means_not_set():
    opts, warnings = parse_options({"temperature": None, "top_k": None, "stop": None})
    assert opts == GenerationOptions() and warnings == []


def test_removed_options_are_ignored_and_logged_once_per_process(caplog):
    raw = {"mirostat": 2, "mirostat_tau": "not even a number", "tfs_z": 1.0, "penalize_newline": True,
           "temperature": 0.5}
    with caplog.at_level(logging.WARNING, logger=options_mod.__name__):
        opts, warnings = parse_options(raw)
        again, warnings_again = parse_options(raw)
    assert opts.temperature == 0.5 and again == opts
    assert len(warnings) == 4 and warnings == warnings_again  # every request learns about them
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 4  # ...but the log says it once per option
    assert all("removed" in m for m in logged)


@pytest.mark.parametrize("name", sorted(REMOVED_OPTIONS))
def test_every_removed_option_is_accepted(name):
    opts, warnings = parse_options({name: 1})
    assert opts == GenerationOptions() and len(warnings) == 1 and name in warnings[0]


def test_unknown_keys_warn_with_a_hint(caplog):
    with caplog.at_level(logging.WARNING, logger=options_mod.__name__):
        opts, warnings = parse_options({"max_tokens": 10, "banana": 1})
        parse_options({"banana": 2})
    assert opts == GenerationOptions()
    assert warnings[0] == "unknown option 'max_tokens' ignored; did you mean 'num_predict'?"
    assert warnings[1] == "unknown option 'banana' ignored"
    assert len(caplog.records) == 2


def test_options_must_be_a_mapping():
    with pytest.raises(InvalidOptionError, match='option "options" must be of type object'):
        parse_options([("temperature", 1.0)])  # type: ignore[arg-type]


def test_request_options_override_model_defaults():
    base = GenerationOptions(temperature=0.2, stop=("<|im_end|>",))
    opts, _ = parse_options({"top_k": 10}, base=base)
    assert (opts.temperature, opts.top_k, opts.stop) == (0.2, 10, ("<|im_end|>",))
    assert parse_options(None, base=base)[0] is base
    assert parse_options({"stop": "#"}, base=base)[0].stop == ("#",)


def test_model_is_frozen_and_strict_about_names():
    opts = GenerationOptions()
    with pytest.raises(ValidationError):
        opts.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        GenerationOptions(mirostat=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        GenerationOptions(top_k="40")  # type: ignore[arg-type]


@pytest.mark.parametrize(("num_ctx", "capacity", "expected"), [
    (4096, 1024, 1024), (512, 1024, 512), (0, 1024, 1024), (-1, 2048, 2048)])
def test_context_size_is_clamped_to_the_compiled_capacity(num_ctx, capacity, expected):
    assert GenerationOptions(num_ctx=num_ctx).context_size(capacity) == expected


@pytest.mark.parametrize(("num_predict", "expected"), [(-1, None), (-2, None), (0, None), (100, 100)])
def test_num_predict_special_values(num_predict, expected):
    assert GenerationOptions(num_predict=num_predict).max_new_tokens() == expected


@pytest.mark.parametrize(("repeat_last_n", "expected"), [(64, 64), (0, 0), (-1, 1024)])
def test_repeat_last_n_special_values(repeat_last_n, expected):
    assert GenerationOptions(repeat_last_n=repeat_last_n).penalty_window(1024) == expected


def test_greedy_and_seed_helpers():
    assert GenerationOptions(temperature=0).greedy and GenerationOptions(temperature=-1).greedy
    assert not GenerationOptions().greedy
    assert GenerationOptions().rng_seed is None and GenerationOptions(seed=0).rng_seed == 0


json_numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(FLOAT_OPTIONS), json_numbers, max_size=len(FLOAT_OPTIONS)))
def test_any_json_number_is_a_valid_float_option(raw):
    opts, warnings = parse_options(raw)
    assert warnings == []
    for key, value in raw.items():
        assert getattr(opts, key) == float(value)
