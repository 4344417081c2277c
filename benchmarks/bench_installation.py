"""The installation's experience on the simulated card: time to first token, first sentence and 100 tokens.

Replays a 30-turn conversation of the talking-lantern installation (the whole history resent every turn,
num_predict 100) on the simulated card for each preset, in one run, five ways:

  plain chunks       prefill as before the planner (every prompt in padded P-token chunks);
  planner            the prefill planner (runtime/planner.py) with the card's costs;
  planner + partial  the planner, and the application sends the visitor's words so far (all but the last
                     word, as speech recognition delivers them) with num_predict 0 while the visitor is still
                     speaking; that evaluation is off the critical path and not counted. The request then
                     prefills only the rest of the line and the template's tail.
  planner + idle     the planner, and after each reply the engine's idle prefill (engine/idle_prefill.py)
                     evaluates the next prompt's known start (the reply's end of turn and the user header,
                     engine/next_turn.py) while the visitor listens; off the critical path, not counted.
  planner + partial + idle   both.
The device time spent off the critical path (partial and idle evaluations) is reported beside the figures.
Each turn goes the way the engine takes it: the messages are fitted to the compiled context (engine/context.py,
old messages dropped in stable blocks), the longest cached prefix is reused and only the new tokens are
prefilled; then 99 decode steps give the 100th token. The scripted reply is what enters the history, and its
first sentence ends at the token that completes it.

Everything is SIMULATED: times are the simulated card's device clock (its timing presets are partly estimates,
runtime/simcard/timing.py), the models are null-compute stacks of the presets' full geometry, and token counts
come from the SmolLM2 tokenizer's ChatML template (the Qwen bundles use ChatML too; their byte-pair vocabulary
gives similar counts for English). Host time (sampler, detokenizer, Python) is not on that clock: about 1 ms
per token on top (docs/performance.md).

    python benchmarks/bench_installation.py [--preset P ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_dir  # noqa: E402

from ax_llm_provider.engine.context import ConversationCuts, fit_messages  # noqa: E402
from ax_llm_provider.engine.next_turn import known_next_prefix  # noqa: E402
from ax_llm_provider.model.tokenizer import ChatTokenizer  # noqa: E402
from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack  # noqa: E402
from ax_llm_provider.runtime.planner import costs_from_timing, make_plan  # noqa: E402
from ax_llm_provider.runtime.simcard import SimCard, get_preset  # noqa: E402

PRESETS = ("qwen3-0.6b-w8a16", "qwen2.5-0.5b-w4a16")
NUM_PREDICT = 100
SENTENCE_END = re.compile(r"[.!?]")
SYSTEM = ("You are the voice of a talking lantern in an art installation. "
          "Answer visitors warmly in one or two short sentences.")
# (visitor line, the lantern's reply): one visitor after another, as the installation's log runs.
CONVERSATION = [
    ("Hello lantern, who are you?", "I am the lantern of this room. I keep a small light for everyone who passes."),
    ("What do you see tonight?", "I see coats wet with rain and faces that have walked a long way."),
    ("Are you alive?", "I am as alive as a flame can be. I flicker when you speak."),
    ("Why is your light blue?", "Blue is the colour I keep for quiet evenings. It turns gold when people laugh."),
    ("Can you tell me a story?", "Once a moth loved me so much it stayed all winter. We never touched, but we talked."),
    ("That is sad.", "It is also kind. Some friendships are made of distance."),
    ("Do you get tired?", "Only near dawn. Then I dream of candles that came before me."),
    ("What is your favourite sound?", "The hush when a door closes and the room decides to listen."),
    ("My daughter is scared of the dark.", "Tell her the dark is only the light resting. I will keep watch."),
    ("Can you sing?", "I hum in a key only moths can hear. Perhaps you feel it in your hands."),
    ("Who built you?", "Many hands built me, and many voices taught me. You are teaching me now."),
    ("What do you think about the city?", "The city is a field of small lanterns. I like to count them."),
    ("Do you remember the last visitor?", "I remember her red scarf and her question about the sea."),
    ("What did you tell her?", "I told her the sea keeps every light that falls into it."),
    ("Is that true?", "It is true for lanterns. I cannot speak for the fish."),
    ("Ha! You are funny.", "Thank you. Laughter makes my glass warm."),
    ("What happens when you go out?", "I rest in the dark and wait for a hand to wake me."),
    ("Are you afraid of that?", "No. Every night ends, and every lantern is lit again."),
    ("Can I take a picture of you?", "Of course. Please tell your camera to be gentle with my glow."),
    ("What should I wish for?", "Wish for a good question. Answers are easier to find."),
    ("Where do you come from?", "I come from an old workshop by the river, where the glassblowers sang."),
    ("Do you have friends?", "The street lamps are my cousins. We nod to each other at night."),
    ("What is the best time to visit you?", "Come when it rains. I shine brighter for wet travellers."),
    ("I have to go soon.", "Then go gently. I will keep a little light for your return."),
    ("Will you remember me?", "I will remember your voice. It had a warm colour."),
    ("What colour was it?", "Amber, like tea held up to a window."),
    ("Can you see the stars from here?", "Only their reflections in the puddles. They look shy tonight."),
    ("Do you ever feel lonely?", "Sometimes, between visitors. Then I listen to the building breathe."),
    ("Thank you for talking with me.", "Thank you for lighting up my evening. Come back soon."),
    ("Goodbye, lantern!", "Goodbye, traveller. Walk safely, and keep a light inside you."),
]


@dataclass
class Turn:
    prompt: int
    new: int
    ttft_ms: float
    sentence_ms: float | None
    hundred_ms: float | None
    plan: str
    background_ms: float  # device time spent before the request: partial and idle evaluations


MODES = ("plain chunks", "planner", "planner + idle", "planner + partial", "planner + partial + idle")


@dataclass
class Replay:
    preset: str
    mode: str
    turns: list[Turn] = field(default_factory=list)


def first_sentence_tokens(tokenizer: ChatTokenizer, reply_ids: list[int]) -> int:
    """How many reply tokens it takes until the first sentence is complete (the whole reply if none ends)."""
    for k in range(1, len(reply_ids) + 1):
        if SENTENCE_END.search(tokenizer.decode(reply_ids[:k])):
            return k
    return len(reply_ids)


def plan_summary(stack: AxclDecoderStack, start: int, count: int) -> str:
    plan = make_plan(stack.spec, start, count, stack.planner)
    chunks = sum(not c.group.is_decode for c in plan)
    return f"{chunks} chunk(s) + {len(plan) - chunks} step(s)"


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def replay(preset: str, mode: str, tokenizer: ChatTokenizer) -> Replay:
    """One pass over the conversation on a fresh simulated card."""
    card = SimCard(preset)
    layers, post = card.add_null_stack()
    stack = AxclDecoderStack(layers, post, card)
    planner = mode != "plain chunks"
    stack.planner = costs_from_timing(stack.spec, card.timing, kv_d2d=stack.kv_d2d).planner() if planner else None
    capacity, hidden = stack.spec.decode_capacity, stack.spec.hidden
    rows = (np.random.default_rng(0).standard_normal((64, hidden)) * 0.02).astype(np.float32)

    def embeds(ids: list[int]) -> np.ndarray:  # null compute: the content of a row does not matter
        return rows[np.asarray(ids) % len(rows)]

    def render(messages: Any) -> list[int]:
        return tokenizer.encode(tokenizer.render_chat(messages), add_special_tokens=False)

    end_of_turn = tokenizer.encode("<|im_end|>", add_special_tokens=False)
    result, cuts, history, live = Replay(preset, mode), ConversationCuts(), [], []
    idle_ms = 0.0
    clock = card.clock
    try:
        for line, reply in CONVERSATION:
            head = [{"role": "system", "content": SYSTEM}, *history]
            background = clock.device_ms
            if "partial" in mode and " " in line:  # num_predict 0 with the words heard so far
                early = fit_messages([*head, {"role": "user", "content": line.rsplit(" ", 1)[0]}], render, capacity,
                                     cuts=cuts).tokens
                done = min(common_prefix(live, early), len(early) - 1)
                stack.prefill(embeds(early[done:]), done, want_logits=False)
                live = early
            background = clock.device_ms - background + idle_ms
            prompt = fit_messages([*head, {"role": "user", "content": line}], render, capacity, cuts=cuts).tokens
            reused = min(common_prefix(live, prompt), len(prompt) - 1)
            summary = plan_summary(stack, reused, len(prompt) - reused)
            started = clock.device_ms
            stack.prefill(embeds(prompt[reused:]), reused)
            times = [clock.device_ms - started]  # token 1 comes from the prefill's logits
            budget = min(NUM_PREDICT, capacity - len(prompt))
            for i in range(1, budget):
                stack.decode(rows[i % len(rows)], len(prompt) + i - 1)
                times.append(clock.device_ms - started)
            reply_ids = tokenizer.encode(reply, add_special_tokens=False) + end_of_turn
            k = first_sentence_tokens(tokenizer, reply_ids)
            result.turns.append(Turn(len(prompt), len(prompt) - reused, times[0], times[k - 1] if k <= budget else None,
                                     times[NUM_PREDICT - 1] if budget == NUM_PREDICT else None, summary, background))
            live = prompt + reply_ids[:-1]  # the last sampled token (end of turn) is never fed back
            idle_ms = clock.device_ms
            if mode.endswith("idle"):  # the device is idle until the visitor's next words
                known = known_next_prefix(render, [*head, {"role": "user", "content": line}],
                                          {"role": "assistant", "content": reply})
                done = min(common_prefix(live, known), len(known) - 1)
                stack.prefill(embeds(known[done:]), done, want_logits=False)
                live = known
            idle_ms = clock.device_ms - idle_ms
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]
    finally:
        stack.close()
    return result


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def figures(run: Replay) -> dict[str, Any]:
    out: dict[str, Any] = {"preset": run.preset, "mode": run.mode, "turns": len(run.turns),
                           "median_new_tokens": statistics.median(t.new for t in run.turns),
                           "median_background_ms": statistics.median(t.background_ms for t in run.turns)}
    for name in ("ttft_ms", "sentence_ms", "hundred_ms"):
        values = [v for t in run.turns if (v := getattr(t, name)) is not None]
        out[name] = {"median": statistics.median(values) if values else None, "p90": percentile(values, 90),
                     "n": len(values)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=sorted(p for p in PRESETS), help="default: both")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--turns", action="store_true", help="also print every turn")
    args = parser.parse_args()
    tokenizer = ChatTokenizer(model_dir() / "llama_tokenizer")
    results = []
    for preset in args.preset or PRESETS:
        one_chunk = get_preset(preset).timing.prefill_layer_ms * get_preset(preset).geometry.layers
        for mode in MODES:
            run = replay(preset, mode, tokenizer)
            results.append({**figures(run), "one_chunk_floor_ms": one_chunk})
            if args.turns:
                for i, t in enumerate(run.turns, 1):
                    print(f"  {preset} {mode} turn {i:2d}: prompt {t.prompt:4d} new {t.new:3d} "
                          f"[{t.plan}] ttft {t.ttft_ms:7.1f} sentence {t.sentence_ms or float('nan'):7.1f} ms")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("SIMULATED card (device clock of the timing presets; null-compute models), "
          f"{len(CONVERSATION)} turns, num_predict {NUM_PREDICT}, whole history resent")
    print("| preset | prefill | new tokens (median) | first token median / p90 | first sentence median / p90 "
          "| 100 tokens median / p90 | off-clock work (median) | one-chunk floor |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        cells = [f"{r[k]['median'] / 1e3:.2f} s / {r[k]['p90'] / 1e3:.2f} s"
                 for k in ("ttft_ms", "sentence_ms", "hundred_ms")]
        print(f"| {r['preset']} | {r['mode']} | {r['median_new_tokens']} | "
              f"{' | '.join(cells)} | {r['median_background_ms'] / 1e3:.2f} s | "
              f"{r['one_chunk_floor_ms'] / 1e3:.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
