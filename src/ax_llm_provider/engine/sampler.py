"""Token sampling over one float32 logits vector [vocab], in small pure numpy pieces (mlx-lm style).

The chain is llama.cpp's default (`common_sampler`, which Ollama's llama-server runner uses):

    penalties -> top_k -> typical_p -> top_p -> min_p -> temperature -> dist

- penalties (`make_logits_processors`): repeat_penalty divides positive / multiplies non-positive
  logits of the tokens seen in the last repeat_last_n, then frequency_penalty x count and
  presence_penalty are subtracted. Only those few ids are touched, in place.
- truncation and temperature (`candidate_distribution`): every step after top_k works on the k
  survivors, renormalised among them (as llama.cpp). top_p keeps up to and including the token that
  reaches the mass; typical_p needs the mass to be exceeded; min_p compares to the top logit.
- dist: one uniform draw from a `numpy.random.Generator` (seed >= 0 reproduces, otherwise fresh
  entropy). temperature <= 0 is greedy: the top token of what truncation kept, no RNG.

Speed (vocab 151936, per token on a Pi): nothing sorts or exponentiates the whole vocabulary on the
usual path. `np.argpartition` over 150k floats costs ~1 ms, so `top_k_ids` first guesses the k-th
largest value from a strided sample of ~2k logits, keeps everything above the guess with one
vectorised compare (a few hundred ids), and only sorts those; a bad guess falls back to an exact
partition. Ties are broken by the lower token id, so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .options import GenerationOptions

LogitsProcessor = Callable[[Sequence[int] | np.ndarray, np.ndarray], np.ndarray]
Sampler = Callable[[np.ndarray], int]

_SAMPLE_POINTS = 2048  # strided sample used to guess the top-k threshold
_NUCLEUS_START = 256  # first guess of how many tokens hold top_p of the mass when top_k is off


class InvalidLogitsError(ValueError):
    """The logits cannot be sampled from (NaN, +inf, all masked, wrong shape)."""


def _check(logits: np.ndarray) -> float:
    if logits.ndim != 1 or logits.size == 0:
        raise InvalidLogitsError(f"expected a 1-D logits vector [vocab], got shape {logits.shape}")
    top = float(logits.max())  # NaN propagates through max, so one pass checks for it
    if not math.isfinite(top):
        raise InvalidLogitsError(
            f"logits max is {top}: the model output is corrupt (NaN/inf) or every token is masked; "
            "check the runtime backend and any token mask")
    return top


# ---- selection ----------------------------------------------------------------------------------

def top_k_ids(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of `x` as (ids, values), by value descending then id ascending."""
    n = x.shape[0]
    k = max(0, min(k, n))
    if k == 0:
        return np.empty(0, np.intp), x[:0]
    cand = np.arange(n) if k == n else _top_k_superset(x, k)
    vals = x[cand]
    if cand.size > 8 * k + 1024:  # a large tie group at the threshold: cut to k without a big sort
        kth = np.partition(vals, cand.size - k)[cand.size - k]
        above = np.flatnonzero(vals > kth)
        ties = np.flatnonzero(vals == kth)[: k - above.size]
        keep = np.sort(np.concatenate((above, ties)))
        cand, vals = cand[keep], vals[keep]
    order = np.argsort(-vals, kind="stable")[:k]  # cand is ascending, so stable = lower id first
    return cand[order], vals[order]


def _top_k_superset(x: np.ndarray, k: int) -> np.ndarray:
    """Ids (ascending) of a small set that surely contains the k largest entries of x."""
    n = x.shape[0]
    stride = max(1, n // _SAMPLE_POINTS)
    sample = x[::stride]
    # the r-th largest sample has about r*stride values above it: aim at ~4k candidates
    r = min(sample.size, (4 * k + 64) // stride + 1)
    threshold = np.partition(sample, sample.size - r)[sample.size - r]
    cand = np.flatnonzero(x >= threshold)
    if cand.size < k:  # the sample missed the tail: exact k-th value (slow, rare)
        threshold = np.partition(x, n - k)[n - k]
        cand = np.flatnonzero(x >= threshold)
    return cand


def _log_sum_exp(vals: np.ndarray) -> float:
    top = vals[0] if vals.size else 0.0
    return float(top + np.log(np.exp(vals - top).sum()))


def _drop_masked(ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, int(np.count_nonzero(vals > -np.inf)))  # vals sorted descending: a prefix
    return ids[:n], vals[:n]


# ---- the truncation steps, over candidates sorted by logit descending (float64) ----------------

def _typical(ids: np.ndarray, vals: np.ndarray, p: float, min_keep: int) -> tuple[np.ndarray, np.ndarray]:
    logp = vals - _log_sum_exp(vals)
    probs = np.exp(logp)
    entropy = -float((probs * logp).sum())
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    cum = np.cumsum(probs[order])
    n = int(np.searchsorted(cum, p, side="right")) + 1  # first index whose mass exceeds p
    keep = np.sort(order[: min(max(n, min_keep), ids.size)])  # back to logit order
    return ids[keep], vals[keep]


def _top_p(ids: np.ndarray, vals: np.ndarray, p: float, min_keep: int,
           log_z: float | None) -> tuple[np.ndarray, np.ndarray]:
    log_z = _log_sum_exp(vals) if log_z is None else log_z
    cum = np.cumsum(np.exp(vals - log_z))
    n = int(np.searchsorted(cum, p, side="left")) + 1  # first index whose mass reaches p
    n = min(max(n, min_keep), ids.size)
    return ids[:n], vals[:n]


def _min_p(ids: np.ndarray, vals: np.ndarray, p: float, min_keep: int) -> tuple[np.ndarray, np.ndarray]:
    n = int(np.count_nonzero(vals >= vals[0] + math.log(p)))
    n = min(max(n, min_keep), ids.size)
    return ids[:n], vals[:n]


def _nucleus_superset(x: np.ndarray, top: float, top_p: float) -> tuple[np.ndarray, np.ndarray, float]:
    """top_k off: the top tokens that hold top_p of the mass, plus log Z of the whole vocabulary."""
    weights = np.exp(x - np.float32(top))  # one float32 pass for the exact total mass
    total = float(weights.sum(dtype=np.float64))
    k = _NUCLEUS_START
    while True:
        ids, vals = top_k_ids(x, k)
        if k >= x.shape[0] or weights[ids].sum(dtype=np.float64) >= top_p * total * (1 + 1e-6):
            return ids, vals, top + math.log(total)
        k *= 8


def candidate_distribution(
    logits: np.ndarray, *, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.9,
    min_p: float = 0.0, typical_p: float = 1.0, min_keep: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """What dist draws from: (token ids, probabilities) after truncation and temperature.

    Ids are ordered by logit descending (lower id first on ties); probabilities sum to 1.
    """
    top = _check(logits)
    n = logits.shape[0]
    min_keep = max(1, min_keep)
    log_z: float | None = None  # log partition when the candidates are only a superset
    if 0 < top_k < n:
        ids, vals = top_k_ids(logits, top_k)
    elif typical_p < 1.0:
        ids, vals = top_k_ids(logits, n)  # typical without top_k orders the whole vocabulary: slow
    elif top_p < 1.0:
        ids, vals, log_z = _nucleus_superset(logits, top, top_p)
    elif min_p > 0.0:
        cut = top + min(0.0, math.log(min_p)) - 1e-4  # a superset; the exact cut is _min_p's
        cand = np.flatnonzero(logits >= np.float32(cut))
        order = np.argsort(-logits[cand], kind="stable")
        ids, vals = cand[order], logits[cand[order]]
    else:
        ids, vals = top_k_ids(logits, n)  # nothing truncates: the whole vocabulary, in order
    ids, vals = _drop_masked(ids, vals.astype(np.float64))
    if typical_p < 1.0:
        ids, vals = _typical(ids, vals, typical_p, min_keep)
    if top_p < 1.0:
        ids, vals = _top_p(ids, vals, top_p, min_keep, log_z)
    if min_p > 0.0:
        ids, vals = _min_p(ids, vals, min_p, min_keep)
    if temperature <= 0.0:
        return ids[:1], np.ones(1)
    probs = np.exp((vals - vals[0]) / temperature)
    return ids, probs / probs.sum()


def _draw(rng: np.random.Generator, probs: np.ndarray) -> int:
    cum = np.cumsum(probs)
    i = int(np.searchsorted(cum, (1.0 - rng.random()) * cum[-1], side="left"))
    return min(i, probs.size - 1)


def make_sampler(
    *, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.9, min_p: float = 0.0,
    typical_p: float = 1.0, seed: int | None = None, min_keep: int = 1,
) -> Sampler:
    """A `logits -> token id` closure. seed None or < 0 draws fresh entropy; >= 0 reproduces."""
    rng = np.random.default_rng(seed if seed is not None and seed >= 0 else None)
    no_cut = top_p >= 1.0 and min_p <= 0.0 and typical_p >= 1.0

    def sample(logits: np.ndarray) -> int:
        if temperature <= 0.0 and typical_p >= 1.0:
            # truncation always keeps the top token, so greedy is just argmax (first id on ties)
            _check(logits)
            return int(np.argmax(logits))
        if no_cut and not 0 < top_k < logits.shape[0]:
            top = _check(logits)  # full-vocabulary draw without building a sorted distribution
            weights = np.exp((logits - np.float32(top)) / np.float32(temperature))
            cum = np.cumsum(weights, dtype=np.float64)
            return min(int(np.searchsorted(cum, (1.0 - rng.random()) * cum[-1], side="left")), logits.size - 1)
        ids, probs = candidate_distribution(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            typical_p=typical_p, min_keep=min_keep)
        return int(ids[0]) if ids.size == 1 else int(ids[_draw(rng, probs)])

    return sample


# ---- penalties ------------------------------------------------------------------------------------

def make_logits_processors(
    *, repeat_penalty: float = 1.0, repeat_last_n: int = 64, presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0, context_size: int | None = None,
) -> list[LogitsProcessor]:
    """`(tokens, logits) -> logits` closures; they modify `logits` in place and return it.

    `tokens` is the whole sequence so far, prompt included (llama.cpp and Ollama count the prompt).
    repeat_last_n -1 means `context_size`; 0 disables; repeat_penalty <= 0 counts as 1 (off).
    """
    penalty = repeat_penalty if repeat_penalty > 0 else 1.0
    if repeat_last_n < 0:
        if context_size is None:
            raise ValueError("repeat_last_n=-1 means the context size: pass context_size=")
        repeat_last_n = context_size
    if repeat_last_n == 0 or (penalty == 1.0 and presence_penalty == 0.0 and frequency_penalty == 0.0):
        return []
    window = repeat_last_n
    rp, fp, pp = np.float32(penalty), np.float32(frequency_penalty), np.float32(presence_penalty)

    def apply_penalties(tokens: Sequence[int] | np.ndarray, logits: np.ndarray) -> np.ndarray:
        if len(tokens) == 0:
            return logits
        ids, counts = np.unique(np.asarray(tokens[-window:], dtype=np.int64), return_counts=True)
        inside = (ids >= 0) & (ids < logits.shape[0])
        if not inside.all():
            ids, counts = ids[inside], counts[inside]
        vals = logits[ids]
        if rp != 1.0:
            with np.errstate(over="ignore"):  # masks written as -FLT_MAX just become -inf
                vals = np.where(vals <= 0, vals * rp, vals / rp)
        if fp != 0.0 or pp != 0.0:
            vals = vals - (counts.astype(np.float32) * fp + pp)
        logits[ids] = vals
        return logits

    return [apply_penalties]


# ---- logprobs -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


def compute_logprobs(logits: np.ndarray, token_id: int, top_n: int = 0) -> TokenLogprobs:
    """Log-softmax of `logits` (pass the processed logits) for one token and the top_n best."""
    top = _check(logits)
    log_z = top + math.log(float(np.exp(logits - np.float32(top)).sum(dtype=np.float64)))
    best: tuple[tuple[int, float], ...] = ()
    if top_n > 0:
        ids, vals = top_k_ids(logits, top_n)
        best = tuple((int(i), float(v) - log_z) for i, v in zip(ids, vals, strict=True))
    return TokenLogprobs(int(token_id), float(logits[token_id]) - log_z, best)


# ---- the pieces together --------------------------------------------------------------------------

class TokenSampler:
    """Penalties, sampler and optional logprobs as the generator's `(logits, history) -> token`.

    The penalties write into the `logits` passed in (the generator owns that buffer). With logprobs
    on, `last_logprobs` holds the last token's entry: log-softmax after penalties, before
    temperature and truncation, as mlx-lm reports them (Ollama's runners use the raw logits).
    """

    def __init__(self, sampler: Sampler, processors: Sequence[LogitsProcessor] = (),
                 *, logprobs: bool = False, top_logprobs: int = 0) -> None:
        self._sampler, self._processors = sampler, tuple(processors)
        self._logprobs, self._top = logprobs or top_logprobs > 0, max(0, top_logprobs)
        self.last_logprobs: TokenLogprobs | None = None

    @classmethod
    def from_options(cls, opts: GenerationOptions, *, context_size: int,
                     logprobs: bool = False, top_logprobs: int = 0) -> TokenSampler:
        sampler = make_sampler(
            temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p,
            typical_p=opts.typical_p, seed=opts.rng_seed)
        processors = make_logits_processors(
            repeat_penalty=opts.repeat_penalty, repeat_last_n=opts.penalty_window(context_size),
            presence_penalty=opts.presence_penalty, frequency_penalty=opts.frequency_penalty)
        return cls(sampler, processors, logprobs=logprobs, top_logprobs=top_logprobs)

    @property
    def penalized(self) -> bool:
        """Whether penalties rewrite the logits (repeat, presence, frequency): grammar masks cannot be compact."""
        return bool(self._processors)

    def __call__(self, logits: np.ndarray, history: Sequence[int] | np.ndarray) -> int:
        for process in self._processors:
            logits = process(history, logits)
        token = self._sampler(logits)
        if self._logprobs:
            self.last_logprobs = compute_logprobs(logits, token, self._top)
        return token
