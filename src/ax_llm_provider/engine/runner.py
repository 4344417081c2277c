"""One loaded model on the device thread: prompt tokens in, text deltas and Ollama's counters out.

Everything here runs on the device worker's thread (engine/worker/scheduler.py), so the decoder stack,
the prefix cache and the sampler state are never touched concurrently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..model.loader import LoadedModel
from .context import ConversationCuts
from .decoding.constraints import GrammarCompiler
from .decoding.grammar_sampler import ConstraintPlan
from .generator import generate_tokens
from .options import GenerationOptions
from .prefix_cache import PrefixCache
from .prompt import PromptBuilder
from .sampler import TokenSampler
from .textstream import DoneReason, TextStream
from .worker.scheduler import CancelToken

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStats:
    """How a run ended, with Ollama's counters; carried by the run's last step."""

    done_reason: str  # "stop" or "length"
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose KV came from the prefix cache
    prompt_ns: int
    eval_count: int
    eval_ns: int
    tokens: list[int]  # prompt + generated, for /generate's `context`
    closing_tokens: int = 0  # tokens a grammar's closing policy chose to end the JSON within the budget


@dataclass(frozen=True)
class RunStep:
    """A text delta (and its logprobs); the last step of a run also carries `final`."""

    text: str
    logprobs: list[dict[str, Any]] | None = None
    final: RunStats | None = None


class ModelRunner:
    """Owns a LoadedModel and the per-model caches (prefix KV, conversation cuts)."""

    def __init__(self, model: LoadedModel, *, snapshot_bytes: int = 256 << 20) -> None:
        self.model = model
        self.prompts = PromptBuilder(model.tokenizer, model.name)
        self.cache = PrefixCache(model.stack, max_snapshot_bytes=snapshot_bytes)
        self.cuts = ConversationCuts()
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

    def run(self, prompt: Sequence[int], opts: GenerationOptions, cancel: CancelToken, *, window: int,
            logprobs: bool = False, top_logprobs: int = 0,
            constraint: ConstraintPlan | None = None) -> Iterator[RunStep]:
        """Generate after `prompt` (already fitted to `window`): text steps, the last one with the RunStats.

        `constraint` (format, forced tool calls, banned markers) wraps the sampler; a grammar that is
        complete ends the generation with done_reason "stop" (grammar_sampler.py).
        """
        prompt = list(prompt)
        if not prompt:
            raise ValueError("empty prompt: nothing to evaluate")
        if len(prompt) > window:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the window {window}")
        if opts.num_predict == 0:  # evaluate only (issue 17): see evaluate_only
            yield self.evaluate_only(prompt)
            return
        tokenizer = self.model.tokenizer
        room = window - len(prompt)
        limit = opts.max_new_tokens()
        budget = min(room, limit) if limit is not None else room  # what "length" means for this run
        sampler = TokenSampler.from_options(opts, context_size=window, logprobs=logprobs, top_logprobs=top_logprobs)
        text = TextStream(self._decode, stop=opts.stop, eos_token_ids=tokenizer.eos_ids, prompt_ids=prompt)
        want_logprobs = logprobs or top_logprobs > 0
        guided = None
        if constraint is not None:
            guided = constraint.bind(self.grammars, sampler, max_tokens=budget, compact=not sampler.penalized,
                                     want_logprobs=want_logprobs)
        generated: list[int] = []
        reused = self.cache.prepare(prompt)
        prompt_ns = eval_ns = 0
        finish: DoneReason = "stop"
        clean = False
        try:
            if guided is not None:
                guided.start()  # the first mask is filled while the prompt runs
            steps = generate_tokens(self.model.stack, self.model.embeddings, prompt, sampler=guided or sampler,
                                    end_ids=tokenizer.eos_ids, start=reused, max_new_tokens=budget)
            for step in steps:
                cancel.check()
                generated.append(step.token)
                prompt_ns += step.prefill_ns
                eval_ns += step.ns
                delta = text.push(step.token)
                entries = self._logprob_entries(sampler) if want_logprobs else None
                if delta or entries:
                    yield RunStep(delta, entries)
                if text.done or (guided is not None and guided.finished):
                    break
                finish = step.finish or finish
            rest = text.finish(finish)
            done_reason = "stop" if guided is not None and guided.finished else text.done_reason or "stop"
            guided_stats = getattr(guided, "stats", None)  # a GuidedSampler's; BannedTokens has none
            closing = guided_stats.closing_tokens if guided_stats is not None else 0
            log.debug("run: prompt %d (reused %d) eval %d reason %s", len(prompt), reused, len(generated),
                      done_reason)
            clean = True
            yield RunStep(rest, None, RunStats(done_reason, len(prompt), reused, prompt_ns, len(generated), eval_ns,
                                               prompt + generated, closing))
        finally:
            if guided is not None:
                guided.close()
            # KV holds the prompt and every generated token that was fed back (all but the last sampled).
            if clean or generated:
                self.cache.commit(prompt + generated[:-1])
            # else: failed inside the prefill; prepare() already limited the live KV to the reused rows

    # -- evaluate only (num_predict 0; issue 17) ------------------------------------------------------
    def evaluate_only(self, prompt: list[int]) -> RunStep:
        """Evaluate `prompt` into the KV and the prefix cache, generate nothing (eval_count 0, "length").

        An application feeds what it already knows of the next prompt (the visitor's words so far), so the
        request that follows finds it cached and prefills only the rest. Nothing is sampled.
        """
        reused = self.cache.prepare(prompt)
        began = time.perf_counter_ns()
        self.model.stack.prefill(self.model.embeddings.lookup(prompt[reused:]), reused, want_logits=False)
        self.cache.commit(prompt)
        prompt_ns = time.perf_counter_ns() - began
        log.debug("evaluate only: prompt %d (reused %d)", len(prompt), reused)
        return RunStep("", None, RunStats("length", len(prompt), reused, prompt_ns, 0, 0, list(prompt)))
