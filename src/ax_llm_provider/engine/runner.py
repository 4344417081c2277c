"""One loaded model on the device thread: prompt tokens in, text deltas and Ollama's counters out.

Everything here runs on the device worker's thread (engine/scheduler.py), so the decoder stack,
the prefix cache and the sampler state are never touched concurrently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model.loader import LoadedModel
from .constraints import GrammarCompiler
from .context import ConversationCuts
from .generator import GenerationStats, generate_tokens
from .grammar_sampler import ConstraintPlan
from .options import GenerationOptions
from .prefix_cache import PrefixCache
from .prompt import PromptBuilder
from .sampler import TokenSampler, make_logits_processors
from .scheduler import CancelToken
from .textstream import TextStream

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Filled in while a run streams; complete when the iterator ends."""

    done_reason: str = "stop"
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prompt_ns: int = 0
    eval_count: int = 0
    eval_ns: int = 0
    tokens: list[int] = field(default_factory=list)  # prompt + generated, for /generate's `context`
    stop_string: str | None = None
    closing_tokens: int = 0  # tokens a grammar's closing policy chose to end the JSON within the budget


@dataclass
class RunDelta:
    text: str
    logprobs: list[dict[str, Any]] | None = None


class ModelRunner:
    """Owns a LoadedModel and the per-model caches (prefix KV, conversation cuts)."""

    def __init__(self, model: LoadedModel, *, snapshot_bytes: int = 256 << 20) -> None:
        self.model = model
        self.prompts = PromptBuilder(model.tokenizer, model.name)
        self.cache = PrefixCache(model.stack, max_snapshot_bytes=snapshot_bytes)
        self.cuts = ConversationCuts()
        self.busy = False
        self._grammars: GrammarCompiler | None = None

    @property
    def grammars(self) -> GrammarCompiler:
        """Grammar matchers over this model's vocabulary (built on the first constrained request)."""
        if self._grammars is None:
            tok = self.model.tokenizer
            self._grammars = GrammarCompiler(tok.hf, vocab=self.model.stack.spec.vocab, eos_ids=tok.eos_ids,
                                             key=str(tok.directory))
        return self._grammars

    @property
    def capacity(self) -> int:
        return self.model.stack.spec.decode_capacity

    def _decode(self, ids: list[int]) -> str:
        return self.model.tokenizer.decode(ids, skip_special_tokens=True)

    def _logprob_entries(self, sampler: TokenSampler) -> list[dict[str, Any]] | None:
        entry = sampler.last_logprobs
        if entry is None:
            return None
        piece = self.model.tokenizer.decode
        out: dict[str, Any] = {"token": piece([entry.token_id]), "logprob": entry.logprob}
        if entry.top:
            out["top_logprobs"] = [{"token": piece([i]), "logprob": lp} for i, lp in entry.top]
        return [out]

    def run(self, prompt: Sequence[int], opts: GenerationOptions, cancel: CancelToken, result: RunResult, *,
            window: int, logprobs: bool = False, top_logprobs: int = 0,
            constraint: ConstraintPlan | None = None) -> Iterator[RunDelta]:
        """Generate after `prompt` (already fitted to `window`); yield text deltas; fill `result`.

        `constraint` (format, forced tool calls, banned markers) wraps the sampler; a grammar that is
        complete ends the generation with done_reason "stop" (grammar_sampler.py).
        """
        prompt = list(prompt)
        if not prompt:
            raise ValueError("empty prompt: nothing to evaluate")
        if len(prompt) > window:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the window {window}")
        if opts.num_predict == 0:  # evaluate only (issue 17): see evaluate_only
            self.evaluate_only(prompt, result)
            return
        tokenizer = self.model.tokenizer
        sampler = TokenSampler.from_options(opts, context_size=window, logprobs=logprobs, top_logprobs=top_logprobs)
        text = TextStream(self._decode, stop=opts.stop, eos_token_ids=tokenizer.eos_ids,
                          max_tokens=opts.max_new_tokens(), context_left=window - len(prompt), prompt_ids=prompt)
        guided = None
        if constraint is not None:
            budget = window - len(prompt)
            limit = opts.max_new_tokens()
            penalties = make_logits_processors(
                repeat_penalty=opts.repeat_penalty, repeat_last_n=opts.penalty_window(window),
                presence_penalty=opts.presence_penalty, frequency_penalty=opts.frequency_penalty)
            guided = constraint.bind(self.grammars, sampler, max_tokens=min(budget, limit or budget),
                                     compact=not penalties, want_logprobs=logprobs or top_logprobs > 0)
        stats = GenerationStats()
        generated: list[int] = []
        reused = self.cache.prepare(prompt)
        result.prompt_tokens, result.reused_tokens = len(prompt), reused
        clean = False
        try:
            if guided is not None:
                guided.start()  # the first mask is filled while the prompt runs
            tokens = generate_tokens(self.model.stack, self.model.embeddings, prompt, sampler=guided or sampler,
                                     end_ids=tokenizer.eos_ids, start=reused, stats=stats,
                                     max_new_tokens=window - len(prompt))
            for token in tokens:
                cancel.check()
                generated.append(token)
                delta = text.push(token)
                entries = self._logprob_entries(sampler) if logprobs or top_logprobs else None
                if delta or entries:
                    yield RunDelta(delta, entries)
                if text.done or (guided is not None and guided.finished):
                    break
            rest = text.finish("length" if stats.finish == "length" else "stop")
            if rest:
                yield RunDelta(rest)
            clean = True
        finally:
            if guided is not None:
                guided.close()
                stats_of = getattr(guided, "stats", None)
                result.closing_tokens = stats_of.closing_tokens if stats_of is not None else 0
            # KV holds the prompt and every generated token that was fed back (all but the last sampled).
            if clean or generated:
                self.cache.commit(prompt + generated[:-1])
            # else: failed inside the prefill; prepare() already limited the live KV to the reused rows
            result.prompt_ns, result.eval_ns = stats.prompt_ns, stats.decode_ns
            result.eval_count = len(generated)
            result.done_reason = "stop" if guided is not None and guided.finished else text.done_reason or "stop"
            result.stop_string = text.stop_string
            result.tokens = prompt + generated
            log.debug("run: prompt %d (reused %d) eval %d reason %s", len(prompt), reused, len(generated),
                      result.done_reason)


    # -- evaluate only (num_predict 0; issue 17) ------------------------------------------------------
    def evaluate_only(self, prompt: list[int], result: RunResult) -> None:
        """Evaluate `prompt` into the KV and the prefix cache, generate nothing (eval_count 0, "length").

        An application feeds what it already knows of the next prompt (the visitor's words so far), so the
        request that follows finds it cached and prefills only the rest. Nothing sampled, no output changes.
        """
        reused = self.cache.prepare(prompt)
        result.prompt_tokens, result.reused_tokens = len(prompt), reused
        began = time.perf_counter_ns()
        self.model.stack.prefill(self.model.embeddings.lookup(prompt[reused:]), reused, want_logits=False)
        self.cache.commit(prompt)
        result.prompt_ns = time.perf_counter_ns() - began
        result.eval_count, result.done_reason, result.tokens = 0, "length", list(prompt)
        log.debug("evaluate only: prompt %d (reused %d)", len(prompt), reused)


def elapsed_ns(since: int) -> int:
    return time.perf_counter_ns() - since
