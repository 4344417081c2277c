"""The Modelfile reader: Ollama's syntax (quotes, triple quotes, repeats, case) and its errors."""

from __future__ import annotations

import pytest

from ax_llm_provider.model.modelfile import ModelfileError, parse_modelfile

COYOTE = '''# a character, kept out of the code
FROM smollm2:135m
system """You are Wile E. Coyote.
You plot, you fail, you plot again."""
PARAMETER temperature 0.2
PARAMETER num_ctx 1024
PARAMETER stop "<|im_end|>"
PARAMETER stop END
PARAMETER use_mmap true
MESSAGE user Who are you?
MESSAGE assistant """Wile E. Coyote, super genius."""
LICENSE "MIT"
LICENSE """Second
license"""
'''


def test_every_directive_and_value_form() -> None:
    parsed = parse_modelfile(COYOTE)
    assert parsed.from_ == "smollm2:135m"
    assert parsed.system == "You are Wile E. Coyote.\nYou plot, you fail, you plot again."
    assert parsed.parameters == {"temperature": 0.2, "num_ctx": 1024, "stop": ["<|im_end|>", "END"], "use_mmap": True}
    assert isinstance(parsed.parameters["num_ctx"], int)
    assert parsed.messages == [{"role": "user", "content": "Who are you?"},
                               {"role": "assistant", "content": "Wile E. Coyote, super genius."}]
    assert parsed.license == ["MIT", "Second\nlicense"]
    assert parsed.template is None and parsed.adapters == []


def test_create_arguments_are_client_create_keywords() -> None:
    arguments = parse_modelfile("FROM base\nTEMPLATE {{ .Prompt }}\nADAPTER ./lora.gguf\n").create_arguments()
    assert arguments["from_"] == "base" and arguments["template"] == "{{ .Prompt }}"
    assert arguments["adapters"] == {"adapter0": "./lora.gguf"}
    assert arguments["parameters"] is None and arguments["messages"] is None and arguments["license"] is None


def test_last_value_wins_and_a_string_parameter_stays_a_string() -> None:
    parsed = parse_modelfile("FROM m\nPARAMETER top_k 10\nPARAMETER top_k 20\nPARAMETER seed abc\n")
    assert parsed.parameters == {"top_k": 20, "seed": "abc"}  # the type is judged by create, naming the option


@pytest.mark.parametrize(("text", "message"), [
    ("SYSTEM hi\n", "no FROM line"),
    ("FROM m\nQUANTIZE q4\n", "command must be one of"),
    ("FROM m\nMESSAGE tool hi\n", "message role must be one of"),
    ('FROM m\nSYSTEM """never closed\n', "never closed"),
    ('FROM m\nSYSTEM """a""" b\n', "unexpected text"),
    ("FROM m\nPARAMETER temperature\n", "needs a name and a value"),
    ("FROM\n", "needs a value"),
])
def test_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ModelfileError, match=message):
        parse_modelfile(text)


def test_errors_name_the_line() -> None:
    with pytest.raises(ModelfileError, match="line 3"):
        parse_modelfile("FROM m\n\nMESSAGE robot hi\n")
