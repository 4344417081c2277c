"""KV prefix reuse: the live KV on the device plus a few host snapshots, bounded in bytes.

A request whose prompt starts with tokens already in the KV prefills only the rest (Ollama section 1.12).
With one device there is one live KV, so a second conversation would wipe the first; host snapshots
(`DecoderStack.kv_save` / `kv_restore`) keep a few conversations warm.

Policy, for the installation's pattern (a "screen" conversation and a "visitor" conversation, each resent
whole every turn, alternating):

* Reuse the longest common token prefix of the prompt with the live KV or any snapshot, capped at
  len(prompt) - 1: the last prompt token always runs again to produce logits, as in Ollama.
* Before anything overwrites live rows, look at what would be lost: the live tokens past the point where
  the new request starts writing. If that is at least `min_snapshot_tokens`, save the whole live KV as a
  snapshot, unless a stored snapshot already covers it (has it as a prefix). Small losses (a regenerated
  last reply, a re-tokenized tail) are not worth a copy; a conversation switch is.
* A new snapshot drops stored snapshots it covers (their keys are its prefixes), so each conversation
  holds one snapshot, its latest state. Alternating screen/visitor therefore keeps two snapshots, and
  each turn restores the other conversation's full history and prefills only the new turn.
* Restore only the rows that are reused; the prefill overwrites everything after them.
* LRU eviction by total bytes (and `max_snapshots`); a snapshot larger than the byte bound is not kept.

Invariant: `live_tokens` never claims a row that is not valid. `prepare` shrinks it to the reused prefix
before the caller writes anything, so a request that fails mid-prefill leaves a correct (shorter) state;
`commit` then records what the caller wrote.

Not thread-safe by itself: every call happens on the device worker's thread (engine/worker/scheduler.py), which
also serializes all use of the stack.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..runtime.protocol import DecoderStack, KVSnapshot

logger = logging.getLogger(__name__)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D token arrays."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def _tokens(seq: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(seq, dtype=np.int64).reshape(-1)


def _head(snapshot: KVSnapshot, length: int) -> KVSnapshot:
    """Rows 0..length-1 of a snapshot, as views (no copy)."""
    if length == snapshot.length:
        return snapshot
    return KVSnapshot(length, tuple(a[:length] for a in snapshot.k), tuple(a[:length] for a in snapshot.v))


@dataclass(eq=False)  # identity: the LRU list removes entries by identity
class _Entry:
    tokens: np.ndarray  # the token ids whose K/V rows the snapshot holds
    snapshot: KVSnapshot


class PrefixCache:
    """Tracks which tokens the device KV holds and keeps host snapshots of other conversations."""

    def __init__(self, stack: DecoderStack, max_snapshot_bytes: int = 256 << 20, min_snapshot_tokens: int = 32,
                 max_snapshots: int = 8) -> None:
        if max_snapshot_bytes < 0 or max_snapshots < 0 or min_snapshot_tokens < 1:
            raise ValueError("need max_snapshot_bytes >= 0, max_snapshots >= 0 and min_snapshot_tokens >= 1, got "
                             f"{max_snapshot_bytes}, {max_snapshots} and {min_snapshot_tokens}")
        self.stack = stack
        self.max_snapshot_bytes = max_snapshot_bytes
        self.min_snapshot_tokens = min_snapshot_tokens
        self.max_snapshots = max_snapshots
        self._live = _tokens(())
        self._entries: list[_Entry] = []  # least recently used first
        self.hits = 0
        self.reused_tokens_total = 0
        self.last_reused = 0
        self.saves = 0
        self.restores = 0
        self.evictions = 0

    # -- what the engine calls ------------------------------------------------------------------------

    @property
    def live_tokens(self) -> tuple[int, ...]:
        """Token ids whose K/V rows 0..n-1 are valid on the device right now."""
        return tuple(int(t) for t in self._live)

    def prepare(self, prompt: Sequence[int]) -> int:
        """Make the KV hold the longest reusable prefix of `prompt`; return its length (<= len(prompt) - 1).

        The caller then prefills prompt[n:] starting at position n.
        """
        want = _tokens(prompt)
        limit = max(len(want) - 1, 0)
        live_common = min(common_prefix(self._live, want), limit)
        best: _Entry | None = None
        best_common = live_common
        for entry in reversed(self._entries):  # most recent first, so ties go to the fresher snapshot
            common = min(common_prefix(entry.tokens, want), limit)
            if common > best_common:
                best, best_common = entry, common

        if best is not None:
            self._touch(best)  # first, so saving the live KV below evicts other snapshots before it
        # Live rows from live_common on are about to be overwritten (by the restore or by the prefill).
        self._save_live_if_worth_it(lost=len(self._live) - live_common)
        if best is not None:
            self.stack.kv_restore(_head(best.snapshot, best_common))
            self.restores += 1
            logger.debug("prefix cache: restored %d of %d snapshot rows (live matched %d)",
                         best_common, best.snapshot.length, live_common)
        reused = best_common
        self._live = want[:reused].copy()  # conservative until commit(): only these rows are sure
        self.last_reused = reused
        if reused:
            self.hits += 1
            self.reused_tokens_total += reused
        return reused

    def commit(self, tokens_in_kv: Sequence[int]) -> None:
        """Record the tokens whose rows the KV now holds: the prompt plus every generated token fed back.

        The last sampled token was never run through the model, so it is not in the KV. Call this only
        with rows that were actually written; when unsure (an error mid-prefill), skip it.
        """
        self._live = _tokens(tokens_in_kv).copy()

    def invalidate(self) -> None:
        """Forget the live KV and every snapshot (after a device reset, a reload or an unload)."""
        self._live = _tokens(())
        self._entries.clear()
        self.last_reused = 0

    # -- stats ----------------------------------------------------------------------------------------

    @property
    def snapshot_bytes(self) -> int:
        return sum(e.snapshot.nbytes for e in self._entries)

    @property
    def snapshot_count(self) -> int:
        return len(self._entries)

    def snapshot_keys(self) -> list[tuple[int, ...]]:
        """Token sequences of the stored snapshots, least recently used first (for tests and debugging)."""
        return [tuple(int(t) for t in e.tokens) for e in self._entries]

    # -- internals ------------------------------------------------------------------------------------

    def _save_live_if_worth_it(self, lost: int) -> None:
        live = self._live
        if lost < self.min_snapshot_tokens or self.max_snapshots == 0:
            return
        if any(common_prefix(e.tokens, live) == len(live) for e in self._entries):
            return  # a stored snapshot already holds these rows (and maybe more)
        predicted = len(live) * self.stack.spec.kv_bytes_per_token
        if predicted > self.max_snapshot_bytes:
            logger.debug("prefix cache: %d live tokens (~%d bytes) exceed the snapshot bound, not saved",
                         len(live), predicted)
            return
        self.store(live, self.stack.kv_save(len(live)))

    def store(self, tokens: Sequence[int] | np.ndarray, snapshot: KVSnapshot) -> bool:
        """Keep `snapshot` (rows for `tokens`) in the LRU; False when it alone exceeds the byte bound."""
        key = _tokens(tokens).copy()
        if snapshot.length != len(key):
            raise ValueError(f"snapshot holds {snapshot.length} rows but {len(key)} tokens were given")
        if snapshot.nbytes > self.max_snapshot_bytes or self.max_snapshots == 0:
            return False
        # Snapshots whose tokens are a prefix of the new one are covered by it.
        self._entries = [e for e in self._entries if common_prefix(e.tokens, key) < len(e.tokens)]
        self._entries.append(_Entry(key, snapshot))
        self.saves += 1
        while len(self._entries) > self.max_snapshots or self.snapshot_bytes > self.max_snapshot_bytes:
            evicted = self._entries.pop(0)
            self.evictions += 1
            logger.debug("prefix cache: evicted a %d-token snapshot", len(evicted.tokens))
        return True

    def _touch(self, entry: _Entry) -> None:
        self._entries = [e for e in self._entries if e is not entry] + [entry]
