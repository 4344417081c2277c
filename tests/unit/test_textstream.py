"""Text stream: UTF-8-safe incremental detokenizing, stop strings with hold-back, done_reason."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ax_llm_provider.engine.options import parse_options
from ax_llm_provider.engine.textstream import IncrementalDetokenizer, StopMatcher, TextStream

CORPUS = [
    "Hello world, this is a small test corpus for an art installation.",
    "Grüße aus Köln! Ça va? ñandú, smørrebrød, Ελληνικά, русский текст.",
    "你好，世界。日本語のテキストも少し。한국어 문장입니다.",
    "emoji 🎨🖼️🤖👩‍🎨 and symbols # [stop] <|im_end|> ...",
    "The quick brown fox # jumps [over] the lazy dog 1234567890.",
] * 10


@pytest.fixture(scope="module")
def byte_bpe() -> Tokenizer:
    """A small byte-level BPE (the Qwen/SmolLM2 kind), trained here: no downloads."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(scope="module")
def metaspace_bpe() -> Tokenizer:
    """SentencePiece-style "▁" spaces: decode(suffix) != suffix of decode."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def decoder_of(tok: Tokenizer):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def byte_decode(ids: list[int]) -> str:  # one token per byte: the worst case for split characters
    return bytes(ids).decode("utf-8", errors="replace")


def stream_all(detok: IncrementalDetokenizer, ids) -> list[str]:
    return [detok.push(i) for i in ids] + [detok.flush()]


# ---- detokenizer ---------------------------------------------------------------------------------

def test_split_multibyte_characters_are_never_emitted_half_done():
    text = "a中🎨é"
    deltas = stream_all(IncrementalDetokenizer(byte_decode), text.encode())
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[:3] == ["a", "", ""] and deltas[3] == "中"


def test_incomplete_tail_is_flushed_at_the_end():
    detok = IncrementalDetokenizer(byte_decode)
    assert [detok.push(b) for b in "ok中".encode()[:-1]] == ["o", "k", "", ""]
    assert detok.flush() == "\ufffd"  # the generation really ended mid-character


def test_invalid_bytes_do_not_block_the_stream():
    assert "".join(stream_all(IncrementalDetokenizer(byte_decode), [0x80, ord("a"), 0xFF, ord("b")])) \
        == byte_decode([0x80, ord("a"), 0xFF, ord("b")])


def test_sentencepiece_spaces_come_out_right(metaspace_bpe):
    ids = metaspace_bpe.encode("the quick brown fox jumps over the lazy dog").ids
    deltas = stream_all(IncrementalDetokenizer(decoder_of(metaspace_bpe)), ids)
    assert "".join(deltas) == metaspace_bpe.decode(ids) == "the quick brown fox jumps over the lazy dog"
    # naive per-token decoding would have lost every space
    assert "".join(metaspace_bpe.decode([i]) for i in ids) != metaspace_bpe.decode(ids)


def test_prompt_context_gives_the_first_token_its_space(metaspace_bpe):
    prompt = metaspace_bpe.encode("Hello").ids
    generated = metaspace_bpe.encode("Hello world").ids[len(prompt):]
    detok = IncrementalDetokenizer(decoder_of(metaspace_bpe), prompt)
    assert "".join(stream_all(detok, generated)) == " world"


def test_cost_per_token_is_a_window_not_the_whole_text(byte_bpe):
    seen: list[int] = []

    def counting_decode(ids):
        seen.append(len(ids))
        return byte_bpe.decode(ids)

    ids = byte_bpe.encode(" ".join(CORPUS)).ids
    assert len(ids) > 1000
    out = "".join(stream_all(IncrementalDetokenizer(counting_decode), ids))
    assert out == byte_bpe.decode(ids)
    assert max(seen) <= 12 and len(seen) <= 2 * len(ids) + 2


def test_a_decoder_that_never_settles_is_bounded():
    detok = IncrementalDetokenizer(lambda ids: "x" * len(ids) + "\ufffd", max_pending=8)
    deltas = [detok.push(1) for _ in range(20)]
    assert deltas[7] != "" and sum(1 for d in deltas if d) == 2


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_ids_stream_to_the_full_decode(byte_bpe, data):
    ids = data.draw(st.lists(st.integers(0, byte_bpe.get_vocab_size() - 1), max_size=60))
    decode = decoder_of(byte_bpe)
    assert "".join(stream_all(IncrementalDetokenizer(decode), ids)) == decode(ids)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_random_text_round_trips(byte_bpe, text):
    ids = byte_bpe.encode(text).ids
    assert "".join(stream_all(IncrementalDetokenizer(decoder_of(byte_bpe)), ids)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(["the", "quick", "fox", "Köln", "lazy", "dog", "#"]), max_size=20))
def test_metaspace_random_sentences(metaspace_bpe, words):
    ids = metaspace_bpe.encode(" ".join(words)).ids
    decode = decoder_of(metaspace_bpe)
    assert "".join(stream_all(IncrementalDetokenizer(decode), ids)) == decode(ids)


# ---- stop matcher --------------------------------------------------------------------------------

def feed_all(matcher: StopMatcher, chunks) -> tuple[str, str | None]:
    out, stop = [], None
    for chunk in chunks:
        text, stop = matcher.feed(chunk)
        out.append(text)
        if stop is not None:
            return "".join(out), stop
    return "".join(out) + matcher.flush(), None


def test_stop_spanning_tokens_is_held_back_and_cut():
    m = StopMatcher(["<|im_end|>"])
    assert m.feed("Hi <|im") == ("Hi ", None)
    assert m.feed("_en") == ("", None)
    assert m.feed("d|>more") == ("", "<|im_end|>")
    assert m.matched == "<|im_end|>" and m.feed("x") == ("", None)


def test_a_false_start_is_released():
    m = StopMatcher(["[INST]"])
    assert m.feed("a [IN") == ("a ", None)
    assert m.feed("K") == ("[INK", None)
    assert m.feed(" [") == (" ", None)
    assert m.flush() == "["


def test_installation_stops():
    assert feed_all(StopMatcher(["#", "["]), ["A bird", " sings.", " #hash", "tag"]) == ("A bird sings. ", "#")
    assert feed_all(StopMatcher(["#", "["]), ["no stop here"]) == ("no stop here", None)


def test_the_first_stop_to_complete_wins():
    # "bc" completes before "abcd" could: generation would stop there, whatever the chunking
    assert feed_all(StopMatcher(["abcd", "bc"]), ["abcd"]) == ("a", "bc")
    assert feed_all(StopMatcher(["abcd", "bc"]), ["ab", "cd"]) == ("a", "bc")
    assert feed_all(StopMatcher(["c", "bc"]), ["abc"]) == ("a", "bc")  # same end: the longer one


def test_no_stops_passes_text_straight_through():
    assert StopMatcher([]).feed("anything") == ("anything", None)
    # "" (which would match at once) and duplicates are dropped once, where the options are validated
    assert StopMatcher(parse_options({"stop": ["", ""]})[0].stop).feed("x") == ("x", None)


def first_stop_cut(text: str, stops: list[str]) -> str:
    """Reference: feed one character at a time, cut at the first stop to complete."""
    for end in range(len(text) + 1):
        done = [s for s in stops if text[:end].endswith(s)]
        if done:
            return text[: end - max(len(s) for s in done)]
    return text


@st.composite
def split_text(draw):
    text = draw(st.text(alphabet="ab#[x", max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=10)))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(chunks=split_text(), stops=st.lists(st.text(alphabet="ab#[x", min_size=1, max_size=4), max_size=4))
def test_stop_matcher_never_leaks_and_cuts_at_the_first_stop(chunks, stops):
    text = "".join(chunks)
    out, stop = feed_all(StopMatcher(stops), chunks)
    assert not any(s in out for s in stops)
    assert out == first_stop_cut(text, stops)
    assert (stop is not None) == any(s in text for s in stops)


# ---- text stream ---------------------------------------------------------------------------------

def run(stream: TextStream, ids) -> str:
    out = []
    for i in ids:
        out.append(stream.push(i))
        if stream.done:
            break
    else:
        out.append(stream.finish())
    return "".join(out)


def test_eos_ends_with_stop_and_has_no_text(byte_bpe):
    eos = byte_bpe.token_to_id("<eos>")
    ids = byte_bpe.encode("Hello world").ids
    stream = TextStream(decoder_of(byte_bpe), eos_token_ids={eos})
    assert run(stream, [*ids, eos, *ids]) == "Hello world"
    assert (stream.done_reason, stream.stop_string, stream.n_tokens) == ("stop", None, len(ids) + 1)


def test_stop_string_ends_with_stop_and_is_not_emitted(byte_bpe):
    ids = byte_bpe.encode("A bird sings. #hashtag [x]").ids
    stream = TextStream(decoder_of(byte_bpe), stop=["#", "["])
    assert run(stream, ids) == "A bird sings. "
    assert (stream.done_reason, stream.stop_string) == ("stop", "#")


def run_to_length(stream: TextStream, ids) -> str:
    """What the runner does when the generator's last step says "length"."""
    return "".join(stream.push(i) for i in ids) + stream.finish("length")


def test_num_predict_ends_with_length():
    stream = TextStream(byte_decode)
    assert run_to_length(stream, b"abc") == "abc"
    assert stream.done_reason == "length"


def test_full_context_ends_with_length_and_releases_held_text():
    stream = TextStream(byte_decode, stop=["zz"])
    assert run_to_length(stream, b"az") == "az"  # held "z" is released: the stream is over
    assert stream.done_reason == "length"


def test_length_flushes_a_half_character():
    stream = TextStream(byte_decode)
    assert run_to_length(stream, "中".encode()[:2]) == "\ufffd"
    assert stream.done_reason == "length"


def test_cancelled_stream_has_no_reason_and_rejects_more_tokens():
    stream = TextStream(byte_decode, stop=["[x"])
    assert stream.push(ord("[")) == ""
    assert stream.finish() == "[" and stream.done and stream.done_reason is None
    with pytest.raises(RuntimeError, match="start a new one"):
        stream.push(ord("a"))
