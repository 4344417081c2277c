"""Sampler: hand-made logits with known answers, a full-sort reference, seeds and statistics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ax_llm_provider.engine.options import GenerationOptions
from ax_llm_provider.engine.sampler import (
    InvalidLogitsError,
    TokenSampler,
    candidate_distribution,
    compute_logprobs,
    make_logits_processors,
    make_sampler,
    top_k_ids,
)

VOCAB = 151936


def logits_of(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def dist(logits, **kw) -> dict[int, float]:
    ids, probs = candidate_distribution(logits, **kw)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-9)
    return {int(i): float(p) for i, p in zip(ids, probs, strict=True)}


# ---- a straightforward reference: full sort, llama.cpp's chain, float64 ----------------------------

def reference(logits, *, temperature, top_k, top_p, min_p, typical_p) -> dict[int, float]:
    x = logits.astype(np.float64)
    order = sorted(range(x.size), key=lambda i: (-x[i], i))
    cand = [i for i in order if x[i] > -np.inf] or order[:1]
    if 0 < top_k < x.size:
        cand = [i for i in order[:top_k] if x[i] > -np.inf] or order[:1]

    def probs(ids):
        v = np.array([x[i] for i in ids])
        e = np.exp(v - v.max())
        return e / e.sum()

    if typical_p < 1.0:
        p = probs(cand)
        ent = -(p * np.log(p)).sum()
        by = sorted(range(len(cand)), key=lambda j: (abs(-math.log(p[j]) - ent), j))
        cum, keep = 0.0, len(cand)
        for n, j in enumerate(by):
            cum += p[j]
            if cum > typical_p:
                keep = n + 1
                break
        chosen = set(by[:keep])
        cand = [c for j, c in enumerate(cand) if j in chosen]
    if top_p < 1.0:
        p, cum, keep = probs(cand), 0.0, len(cand)
        for n in range(len(cand)):
            cum += p[n]
            if cum >= top_p:
                keep = n + 1
                break
        cand = cand[:keep]
    if min_p > 0.0:
        cand = [c for n, c in enumerate(cand) if n == 0 or x[c] >= x[cand[0]] + math.log(min_p)]
    if temperature <= 0:
        return {cand[0]: 1.0}
    v = np.array([x[i] for i in cand]) / temperature
    e = np.exp(v - v.max())
    return dict(zip(cand, (e / e.sum()).tolist(), strict=True))


def assert_same_distribution(got: dict[int, float], want: dict[int, float]) -> None:
    assert set(got) == set(want)
    for i, p in want.items():
        assert got[i] == pytest.approx(p, rel=1e-6, abs=1e-9)


# ---- top_k ---------------------------------------------------------------------------------------

def test_top_k_2_leaves_exactly_two_candidates():
    got = dist(logits_of([0.1, 0.4, 0.2, 0.3]), top_k=2, top_p=1.0, temperature=1.0)
    assert got == pytest.approx({1: 0.4 / 0.7, 3: 0.3 / 0.7})


def test_top_k_ties_prefer_the_lower_id():
    ids, vals = top_k_ids(np.array([1, 3, 3, 2, 3], np.float32), 2)
    assert ids.tolist() == [1, 2] and vals.tolist() == [3, 3]


def test_top_k_on_a_full_vocabulary_matches_a_full_sort():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(VOCAB) * 3).astype(np.float32)
    ids, vals = top_k_ids(x, 85)
    want = np.lexsort((np.arange(VOCAB), -x))[:85]
    assert ids.tolist() == want.tolist() and vals.tolist() == x[want].tolist()


@pytest.mark.parametrize("k", [1, 85, 2000])
def test_top_k_survives_adversarial_layouts(k):
    x = np.zeros(VOCAB, np.float32)
    x[1::64] = -1.0  # the strided sample sees only low values
    ids, _ = top_k_ids(x, k)
    assert ids.tolist() == [i for i in range(VOCAB) if i % 64 != 1][:k]
    same = np.full(VOCAB, 2.0, np.float32)  # one giant tie group
    assert top_k_ids(same, k)[0].tolist() == list(range(k))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-4, 4), min_size=1, max_size=300), st.integers(1, 320))
def test_top_k_matches_a_sort_with_many_ties(values, k):
    x = np.asarray(values, np.float32)
    ids, _ = top_k_ids(x, k)
    assert ids.tolist() == sorted(range(x.size), key=lambda i: (-x[i], i))[:k]


# ---- top_p, min_p, typical_p: exact boundaries ---------------------------------------------------

DYADIC = logits_of([0.5, 0.25, 0.125, 0.125])


@pytest.mark.parametrize(("top_p", "kept"), [
    (0.5 - 1e-6, [0]), (0.5 + 1e-6, [0, 1]), (0.75 - 1e-6, [0, 1]), (0.75 + 1e-6, [0, 1, 2]),
    (0.0, [0]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_token_that_reaches_the_mass(top_p, kept):
    got = dist(DYADIC, top_k=0, top_p=top_p, temperature=1.0)
    assert sorted(got) == kept
    total = sum([0.5, 0.25, 0.125, 0.125][i] for i in kept)
    assert got[0] == pytest.approx(0.5 / total, rel=1e-6)


UNIFORM = np.zeros(4, np.float32)  # cumulative masses 0.25, 0.5, 0.75, 1 exactly


def test_exact_boundaries_top_p_reaches_typical_p_exceeds():
    # llama.cpp: top_p stops at cum >= p, typical_p at cum > p, min_p keeps logit >= max + log(p)
    assert sorted(dist(UNIFORM, top_k=0, top_p=0.5, temperature=1.0)) == [0, 1]
    assert sorted(dist(UNIFORM, top_k=0, top_p=1.0, typical_p=0.5, temperature=1.0)) == [0, 1, 2]
    assert sorted(dist(UNIFORM, top_k=0, top_p=1.0, min_p=1.0, temperature=1.0)) == [0, 1, 2, 3]


@pytest.mark.parametrize(("min_p", "kept"), [(0.51, [0]), (0.49, [0, 1]), (0.26, [0, 1]), (0.24, [0, 1, 2, 3])])
def test_min_p_is_relative_to_the_top_probability(min_p, kept):
    assert sorted(dist(DYADIC, top_k=0, top_p=1.0, min_p=min_p, temperature=1.0)) == kept
    assert sorted(dist(DYADIC, top_k=4, top_p=1.0, min_p=min_p, temperature=1.0)) == kept


@pytest.mark.parametrize("top_k", [0, 4])
def test_out_of_range_values_keep_at_least_the_top_token(top_k):
    for kw in ({"min_p": 2.0}, {"top_p": -1.0}, {"typical_p": -1.0}):
        assert list(dist(DYADIC, top_k=top_k, temperature=1.0, **{"top_p": 1.0, **kw})) in ([0], [1])


def test_typical_p_can_drop_the_most_likely_token():
    # H(0.4, 0.3, 0.3) = 1.089 nats; surprisals 0.916 / 1.204: the 0.3 tokens are the typical ones
    x = logits_of([0.4, 0.3, 0.3])
    assert dist(x, top_k=0, top_p=1.0, typical_p=0.5, temperature=1.0) == pytest.approx({1: 0.5, 2: 0.5})
    assert sorted(dist(x, top_k=0, top_p=1.0, typical_p=0.65, temperature=1.0)) == [0, 1, 2]
    greedy = make_sampler(temperature=0, top_k=0, top_p=1.0, typical_p=0.5)
    assert greedy(x) == 1  # greedy picks the best of what typical kept, as llama.cpp


def test_typical_p_keeps_until_the_mass_is_exceeded():
    x = logits_of([0.7, 0.2, 0.1])  # typical order: 0, 1, 2
    assert sorted(dist(x, top_k=0, top_p=1.0, typical_p=0.5, temperature=1.0)) == [0]
    assert sorted(dist(x, top_k=0, top_p=1.0, typical_p=0.8, temperature=1.0)) == [0, 1]


def test_temperature_reshapes_the_kept_candidates():
    got = dist(logits_of([0.5, 0.3, 0.2]), top_k=0, top_p=1.0, temperature=2.0)
    w = np.sqrt([0.5, 0.3, 0.2])
    assert [got[i] for i in range(3)] == pytest.approx((w / w.sum()).tolist(), rel=1e-6)


chains = st.fixed_dictionaries({
    "temperature": st.sampled_from([0.0, 0.5, 0.99, 1.0, 1.7]),
    "top_k": st.sampled_from([0, 1, 2, 5, 40, 85, 1000]),
    "top_p": st.sampled_from([0.0, 0.3, 0.9, 0.95, 1.0]),
    "min_p": st.sampled_from([0.0, 0.05, 0.3]),
    "typical_p": st.sampled_from([1.0, 0.95, 0.5]),
})


@settings(max_examples=150, deadline=None)
@given(chains, st.integers(0, 2**32 - 1), st.integers(2, 400))
def test_chain_matches_the_full_sort_reference(kw, seed, vocab):
    x = (np.random.default_rng(seed).standard_normal(vocab) * 3).astype(np.float32)
    assert_same_distribution(dist(x, **kw), reference(x, **kw))


@pytest.mark.parametrize("kw", [
    {"temperature": 0.99, "top_k": 85, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0},
    {"temperature": 0.8, "top_k": 0, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0},  # nucleus superset
    {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "min_p": 0.05, "typical_p": 1.0},
    {"temperature": 1.0, "top_k": 40, "top_p": 0.95, "min_p": 0.02, "typical_p": 0.9},
])
def test_full_vocabulary_paths_match_the_reference(kw):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(VOCAB) * 2).astype(np.float32)
    x[rng.integers(0, VOCAB, 40)] += 6.0
    assert_same_distribution(dist(x, **kw), reference(x, **kw))


# ---- greedy, seeds, statistics -------------------------------------------------------------------

def test_temperature_zero_is_argmax_and_uses_no_randomness():
    x = np.array([0.1, 2.0, 2.0, -1.0], np.float32)
    for seed in (None, 0, 1):
        sample = make_sampler(temperature=0.0, top_k=40, top_p=0.9, seed=seed)
        assert [sample(x) for _ in range(5)] == [1] * 5  # first id on ties


def test_fixed_seed_reproduces_and_no_seed_does_not():
    x = np.zeros(1000, np.float32)  # flat: every draw is a fresh random choice

    def run(seed):
        sample = make_sampler(temperature=1.0, top_k=0, top_p=1.0, seed=seed)
        return [sample(x) for _ in range(30)]

    assert run(42) == run(42)
    assert run(42) != run(43)
    assert run(None) != run(None) and run(-1) != run(-1)  # fresh entropy (collision ~1e-90)


@pytest.mark.parametrize(("kw", "expected"), [
    ({"top_k": 0, "top_p": 1.0}, [0.5, 0.3, 0.2]),  # full-vocabulary draw
    ({"top_k": 3, "top_p": 1.0}, [0.5, 0.3, 0.2]),  # candidate draw
    ({"top_k": 2, "top_p": 1.0}, [0.625, 0.375, 0.0]),
    ({"top_k": 0, "top_p": 0.6}, [0.625, 0.375, 0.0]),
])
def test_draw_frequencies_follow_the_distribution(kw, expected):
    sample = make_sampler(temperature=1.0, seed=1234, **kw)
    x = logits_of([0.5, 0.3, 0.2])
    counts = np.bincount([sample(x) for _ in range(20000)], minlength=3) / 20000
    assert counts.tolist() == pytest.approx(expected, abs=0.015)


def test_masked_tokens_are_never_drawn():
    x = np.full(50, -np.inf, np.float32)
    x[[3, 17]] = [0.0, 0.5]
    for kw in ({"top_k": 40}, {"top_k": 0, "top_p": 1.0}, {"top_k": 0, "top_p": 0.99}):
        sample = make_sampler(temperature=1.5, seed=3, **kw)
        assert {sample(x) for _ in range(300)} == {3, 17}


@pytest.mark.parametrize("bad", [np.array([0.0, np.nan], np.float32), np.full(4, -np.inf, np.float32),
                                 np.array([np.inf, 0.0], np.float32), np.zeros((2, 2), np.float32)])
def test_corrupt_logits_raise_a_clear_error(bad):
    for sample in (make_sampler(temperature=0), make_sampler(temperature=1.0, top_k=2)):
        with pytest.raises(InvalidLogitsError):
            sample(bad)


# ---- penalties -----------------------------------------------------------------------------------

def penalize(x, tokens, **kw):
    (process,) = make_logits_processors(**kw)
    return process(tokens, x)


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    x = np.array([2.0, 1.9, -1.0, -1.2, 0.5], np.float32)
    out = penalize(x, [0, 2, 0], repeat_penalty=1.5)
    assert out is x  # in place: only the penalized ids were touched
    assert out.tolist() == pytest.approx([2.0 / 1.5, 1.9, -1.5, -1.2, 0.5])
    assert int(np.argmax(out)) == 1 and out[2] < out[3]


def test_presence_and_frequency_penalties_count_occurrences():
    x = np.zeros(5, np.float32)
    out = penalize(x, [1, 1, 1, 2], presence_penalty=0.5, frequency_penalty=0.25)
    assert out.tolist() == pytest.approx([0.0, -1.25, -0.75, 0.0, 0.0])


def test_only_the_last_repeat_last_n_tokens_count():
    x = np.ones(4, np.float32)
    assert penalize(x.copy(), [0, 1, 2], repeat_penalty=2.0, repeat_last_n=2).tolist() == [1, 0.5, 0.5, 1]
    assert penalize(x.copy(), [0, 1, 2], repeat_penalty=2.0, repeat_last_n=-1,
                    context_size=3).tolist() == [0.5, 0.5, 0.5, 1]
    assert penalize(x.copy(), [9, -1, 3], repeat_penalty=2.0).tolist() == [1, 1, 1, 0.5]  # foreign ids


def test_penalizing_a_float_max_mask_stays_quiet():
    x = np.array([1.0, -np.finfo(np.float32).max], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert penalize(x, [1], repeat_penalty=1.5).tolist() == [1.0, -np.inf]


def test_penalties_that_do_nothing_build_no_processor():
    assert make_logits_processors() == []
    assert make_logits_processors(repeat_penalty=1.5, repeat_last_n=0) == []
    assert make_logits_processors(repeat_penalty=0.0) == []  # <= 0 counts as off
    with pytest.raises(ValueError, match="context_size"):
        make_logits_processors(repeat_penalty=1.5, repeat_last_n=-1)


def test_penalty_changes_what_greedy_picks():
    sampler = TokenSampler.from_options(
        GenerationOptions(temperature=0, repeat_penalty=1.5), context_size=1024)
    assert sampler(np.array([2.0, 1.9, 0.0], np.float32), [5, 6]) == 0
    assert sampler(np.array([2.0, 1.9, 0.0], np.float32), [0]) == 1


# ---- logprobs and the assembled sampler ----------------------------------------------------------

def test_logprobs_are_a_log_softmax_with_sorted_top_entries():
    x = np.array([1.0, 3.0, 2.0, 3.0], np.float32)
    lp = x.astype(np.float64) - np.log(np.exp(x.astype(np.float64)).sum())
    got = compute_logprobs(x, 2, top_n=3)
    assert got.token_id == 2 and got.logprob == pytest.approx(lp[2])
    assert [i for i, _ in got.top] == [1, 3, 2]
    assert [v for _, v in got.top] == pytest.approx([lp[1], lp[3], lp[2]])
    assert compute_logprobs(x, 0).top == ()


def test_token_sampler_with_the_installation_options():
    opts = GenerationOptions(temperature=0.99, top_k=85, top_p=0.9, repeat_penalty=1.5,
                             repeat_last_n=64, seed=5)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(VOCAB) * 3).astype(np.float32)
    allowed = set(top_k_ids(x, 85 + 20)[0].tolist())  # penalties can only push 20 ids out
    sampler = TokenSampler.from_options(opts, context_size=1024, top_logprobs=5)
    history: list[int] = []
    for _ in range(20):
        token = sampler(x.copy(), history)
        assert token in allowed
        assert sampler.last_logprobs is not None and sampler.last_logprobs.token_id == token
        assert len(sampler.last_logprobs.top) == 5
        history.append(token)
    again = TokenSampler.from_options(opts, context_size=1024)
    replay: list[int] = []
    for _ in range(20):
        replay.append(again(x.copy(), replay))
    assert replay == history and again.last_logprobs is None
