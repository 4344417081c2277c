"""The `axcl` backend: a decoder stack driven through pyaxcl's `axcl.rt.engine_*`, KV resident on the card.

Design (the per-token budget is what the simulated card's counters check):

* Load everything at start: every layer model, its engine context, io-info and one IO per shape group,
  bound once. One K and one V device buffer per layer (C rows, plus P rows of slack in bind mode) is
  shared by every group of that layer: prefill groups read their first Hc rows.
* One decode block [embedding | indices], one decode mask and one prefill block [embeddings | indices |
  mask] are shared by all layers: uploaded once per token / chunk, not once per layer.
* The decode mask lives on the card and is patched in place: per token one 2-byte H2D opens the slot of
  the previous token (any jump, e.g. after prefill or a rewind, is still one contiguous H2D).
* K/V writes (`kv_write`): by default ("d2d") K_cache_out / V_cache_out land in a scratch buffer and
  are copied on the card (D2D) into cache row `pos` after every execute, as the vendor runner does. The
  option "bind" instead re-points the two outputs straight at `K + pos*kv_dim*2` before each execute (a
  host-side setter, no device work): the outputs then overlap the same execute's K_cache input (masked
  rows), which no vendor code does and no document says the NPU tolerates, so it stays opt-in until a
  card shows it gives the same logits (docs/sdk-notes.md, "Writing K/V"). In bind mode a prefill chunk
  writes all P rows, so rows past its real tokens get padding K/V beyond the valid length (masked, and
  overwritten before they are ever valid: hence the P rows of slack). Both cost two calls per layer.
* Hidden states never leave the card: layer m writes a ping-pong buffer that layer m+1 reads; the post
  model reads the last layer's buffer (re-bound to row n-1 after a prefill chunk). Only the logits
  (vocab x 2 bytes) come back, into a `malloc_host` staging buffer (plain host memory in V3.10.2: it saves
  allocations, not transfer time).

Per decode token: 2 H2D + L x (1 execute + 2 D2D, or 2 setters in bind mode) + 1 post execute + 1 D2H
= 3L + 4 calls; bus bytes = align(H*2) + 4 + 2 + vocab*2; no KV crosses the bus.

Device memory is checked before loading (the CMM guard): free CMM from AXCL_SYS_MemQueryStatus after
AXCL_SYS_Init, else from pyAXCL 3.10's get_device_properties; if neither answers, a warning says the load
goes ahead unchecked. A load or allocation that fails anyway is classified by the call and the CMM left.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from time import monotonic
from typing import Any

import numpy as np

from . import axcl_codes as codes
from .axcl_cmm import MB, CmmGuard
from .axcl_device import AxclRuntime, import_axcl, value
from .axcl_layout import plan_layout, read_stack_spec
from .axcl_model import EngineModel
from .bf16 import bf16_to_float32, float32_to_bf16
from .contract import (
    MASK_BLOCKED,
    Chunk,
    ContextOverflowError,
    prefill_indices,
    prefill_mask,
    select_decode_group,
)
from .errors import DeviceError, DeviceMemoryError, check, device_error, execute_error, memory_error
from .planner import Planner, make_plan
from .protocol import KVSnapshot
from .spec import ShapeGroup, StackSpec

log = logging.getLogger(__name__)
H2D, D2H, D2D = codes.AXCL_MEMCPY_HOST_TO_DEVICE, codes.AXCL_MEMCPY_DEVICE_TO_HOST, codes.AXCL_MEMCPY_DEVICE_TO_DEVICE
_BLOCKED_BF16 = int(float32_to_bf16(np.array([MASK_BLOCKED], np.float32))[0])


class _Resources:
    """Everything the stack holds on the card; `close()` releases it once, in reverse order, never raising."""

    def __init__(self, runtime: AxclRuntime) -> None:
        self.runtime, self.rt = runtime, runtime.rt
        self.models: list[EngineModel] = []
        self.device: list[int] = []
        self.host: list[int] = []
        self.closed = False
        self.cmm = CmmGuard(runtime)

    def load(self, path: str) -> EngineModel:
        self.models.append(EngineModel(self.runtime, path))
        return self.models[-1]

    def malloc(self, size: int, what: str) -> int:
        ptr, ret = self.rt.malloc(size, codes.AXCL_MEM_MALLOC_HUGE_FIRST)
        if ret != 0 or ptr is None:
            raise memory_error(ret or codes.WRAPPER_GUARD, "axcl.rt.malloc", f"{what}, {size} bytes")
        self.device.append(ptr)
        return ptr

    def malloc_host(self, size: int, what: str) -> tuple[int, np.ndarray]:
        ptr = value(self.rt.malloc_host(size), "axcl.rt.malloc_host", f"{what}, {size} bytes")
        self.host.append(ptr)
        return ptr, np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(ptr))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.runtime.bind_thread()  # closing may happen on another thread (atexit)
        except DeviceError as exc:
            log.warning("closing the axcl stack without a device context: %s", exc)
        for model in reversed(self.models):
            model.close()
        for name, fn, ptrs in (("free", self.rt.free, self.device), ("free_host", self.rt.free_host, self.host)):
            for ptr in ptrs:
                ret = fn(ptr)
                if ret != 0:
                    log.warning("closing the axcl stack: %s", device_error(ret, f"axcl.rt.{name}"))
        self.models, self.device, self.host = [], [], []
        self.cmm.close()
        self.runtime.release()


class AxclDecoderStack:
    """DecoderStack on an AX650 card through pyaxcl (`axcl`), or anything with its API (the simulated card)."""

    # How prefill() splits a prompt (runtime/planner.py); None: plain chunks. open_stack sets it from costs.
    planner: Planner | None = None

    def __init__(self, layer_paths: Sequence[str | Path], post_path: str | Path, axcl: Any | None = None, *,
                 device_index: int = 0, kv_write: str = "d2d", config: str | None = None,
                 cmm_floor_mb: int = 128, progress: Callable[[int, int], None] | None = None) -> None:
        """Load every model now (a Pi 5 takes 10-130 s): `progress(done, total)` is called after each file.

        axcl: the `axcl` module (default: `import axcl`) or a simulated card. device_index: an index into
        `axcl.rt.get_device_list()`. kv_write: "d2d" (default, the vendor's copy) or "bind", see the
        module docstring.
        cmm_floor_mb: refuse to load unless this much CMM stays free afterwards.
        """
        if kv_write not in ("bind", "d2d", "copy"):  # "copy" is the calibration's name for "d2d"
            raise ValueError(f"kv_write must be 'bind' or 'copy' ('d2d'), not {kv_write!r}")
        self._d2d = kv_write in ("d2d", "copy")
        self.kv_d2d = self._d2d  # read by the prefill planner's cost model
        self._axcl = axcl if axcl is not None else import_axcl()
        self._res = _Resources(AxclRuntime.acquire(self._axcl, device_index, config))
        self._finalizer = weakref.finalize(self, self._res.close)  # runs at exit too
        self._rt = self._res.rt
        try:
            paths = [str(p) for p in (*layer_paths, post_path)]
            self._res.cmm.require(self._models_bytes(paths), "the model files", cmm_floor_mb)
            for i, path in enumerate(paths):
                self._load(path, cmm_floor_mb)
                log.debug("loaded %d/%d: %s", i + 1, len(paths), path)
                if progress is not None:
                    progress(i + 1, len(paths))
            self._layers, self._post = self._res.models[:-1], self._res.models[-1]
            self.spec: StackSpec = read_stack_spec(self._layers, self._post)
            self._layout = plan_layout(self.spec, self._layers[0], self._post, self._d2d)
            self._res.cmm.require(self._layout.device_bytes(self.spec.layers, self._d2d), "KV cache and IO buffers",
                                  cmm_floor_mb)
            self._allocate()
            self._bind_all()
            self._clear_device_state()
        except BaseException:
            self.close()
            raise
        log.info("axcl stack ready: %d layers, capacity %d, %d shape groups, kv_write=%s", self.spec.layers,
                 self.spec.decode_capacity, len(self.spec.groups), kv_write)

    # -- opening -------------------------------------------------------------------------------

    def _models_bytes(self, paths: list[str]) -> int | None:
        total = 0
        for path in paths:
            _, cmm, ret = self._rt.engine_get_usage(path)
            if ret != 0:
                log.warning("engine_get_usage(%s) failed (%s): the CMM budget check is skipped for the model files",
                            path, device_error(ret, "axcl.rt.engine_get_usage"))
                return None
            total += cmm
        return total

    def _load(self, path: str, floor_mb: int) -> None:
        """Load one model; a failure with CMM short of what the file needs is a memory error."""
        try:
            self._res.load(path)
        except DeviceError as exc:
            if type(exc) is not DeviceError:
                raise
            _, need, ret = self._rt.engine_get_usage(path)
            remain = self._res.cmm.free_bytes() if ret == 0 else None
            if remain is not None and need + floor_mb * MB > remain:
                raise DeviceMemoryError(exc.code, exc.function, f"{path}: needs {need / MB:.0f} MB of CMM, "
                                        f"{remain / MB:.0f} MB remain") from exc
            raise

    def _allocate(self) -> None:
        lay, spec, res = self._layout, self.spec, self._res
        kv_bytes = lay.kv_rows * lay.row_bytes
        self._k = [res.malloc(kv_bytes, f"K cache of layer {m}") for m in range(spec.layers)]
        self._v = [res.malloc(kv_bytes, f"V cache of layer {m}") for m in range(spec.layers)]
        self._dec = res.malloc(lay.decode_block, "decode input+indices")
        self._masks = {g: res.malloc(size, f"decode mask of group {g}") for g, size in lay.decode_masks}
        self._pre = res.malloc(lay.prefill_block, "prefill input+indices+mask") if lay.prefill_block else 0
        self._hidden = [res.malloc(lay.hidden_buffer, f"hidden state {i}") for i in (0, 1)]
        self._logits_dev = res.malloc(lay.logits, "logits")
        if self._d2d:
            self._scratch = (res.malloc(lay.kv_scratch, "K_cache_out"), res.malloc(lay.kv_scratch, "V_cache_out"))
        # pinned host mirrors
        c, h = spec.decode_capacity, spec.hidden
        self._dec_host, dec = res.malloc_host(lay.decode_block, "decode staging")
        self._dec_embed = dec[: h * 2].view(np.uint16)
        self._dec_index = dec[lay.decode_indices_offset: lay.decode_indices_offset + 4].view(np.uint32)
        self._mask_host, masks = res.malloc_host(4 * c, "mask slot sources")  # [C open | C blocked]
        masks.view(np.uint16)[:c], masks.view(np.uint16)[c:] = 0, _BLOCKED_BF16
        if lay.prefill_block:
            self._pre_host, pre = res.malloc_host(lay.prefill_block, "prefill staging")
            p = spec.prefill_chunk
            self._pre_embed = pre[: p * h * 2].view(np.uint16).reshape(p, h)
            self._pre_index = pre[lay.prefill_indices_offset: lay.prefill_indices_offset + p * 4].view(np.uint32)
            self._pre_mask = pre[lay.prefill_mask_offset:].view(np.uint16)
        self._logits_host, logits = res.malloc_host(lay.logits, "logits staging")
        self._logits_bits = logits.view(np.uint16)

    def _bind_all(self) -> None:
        lay, spec = self._layout, self.spec
        last = spec.layers - 1
        for m, model in enumerate(self._layers):
            for group in spec.groups:
                g, ins, outs = group.index, model.inputs, model.outputs
                if group.is_decode:
                    first_input, indices, mask = self._dec, self._dec + lay.decode_indices_offset, self._masks[g]
                else:
                    first_input = self._pre
                    indices, mask = self._pre + lay.prefill_indices_offset, self._pre + lay.prefill_mask_offset
                model.bind(g, "input", first_input if m == 0 else self._hidden[(m - 1) % 2], ins["input"].sizes[g])
                model.bind(g, "indices", indices, ins["indices"].sizes[g])
                model.bind(g, "mask", mask, ins["mask"].sizes[g])
                model.bind(g, "K_cache", self._k[m], ins["K_cache"].sizes[g])
                model.bind(g, "V_cache", self._v[m], ins["V_cache"].sizes[g])
                k_out, v_out = self._scratch if self._d2d else (self._k[m], self._v[m])
                model.bind(g, "K_cache_out", k_out, outs["K_cache_out"].sizes[g], output=True)
                model.bind(g, "V_cache_out", v_out, outs["V_cache_out"].sizes[g], output=True)
                model.bind(g, "output", self._hidden[m % 2], outs["output"].sizes[g], output=True)
        self._post.bind(0, "input", self._hidden[last % 2], self._post.inputs["input"].sizes[0])
        self._post.bind(0, "output", self._logits_dev, lay.logits, output=True)
        self._post_row = 0
        # per group, per layer: what the hot loop needs, looked up once
        self._plan = [[(model.model_id, model.context_id, model.ios[g], model.outputs["K_cache_out"].index,
                        model.outputs["V_cache_out"].index, self._k[m], self._v[m])
                       for m, model in enumerate(self._layers)] for g in range(len(spec.groups))]
        self._out_bytes = [self._layers[0].outputs["K_cache_out"].sizes[g] for g in range(len(spec.groups))]
        self._bound_row = [[0] * spec.layers for _ in spec.groups]

    def _clear_device_state(self) -> None:
        """Zero the caches (stale CMM may hold NaN bit patterns that poison masked attention) and block the mask."""
        rb, c = self._layout.row_bytes, self.spec.decode_capacity
        for ptr in (*self._k, *self._v):
            check(self._rt.memset(ptr, 0, self._layout.kv_rows * rb), "axcl.rt.memset", "KV cache")
        for group in self.spec.decode_groups:  # one mask per decode group, C_g + 1 slots each
            mask, cg = self._masks[group.index], group.history
            self._copy(mask, self._mask_host + 2 * c, 2 * cg, H2D)  # slots 0..C_g-1 blocked
            self._copy(mask + 2 * cg, self._mask_host, 2, H2D)  # slot C_g (current token) open
        # per decode group: leading open slots on the card; None: unknown
        self._mask_open: dict[int, int | None] = {g.index: 0 for g in self.spec.decode_groups}

    # -- helpers ------------------------------------------------------------------------------

    def _copy(self, dst: int, src: int, count: int, kind: int) -> None:
        ret = self._rt.memcpy(dst, src, count, kind)
        if ret:
            raise device_error(ret, "axcl.rt.memcpy", f"{count} bytes, kind {kind}")

    def _begin(self) -> None:
        if self._res.closed:
            raise RuntimeError("this axcl decoder stack is closed; open the model again")
        self._res.runtime.bind_thread()

    def _sync_decode_mask(self, pos: int, group: ShapeGroup) -> None:
        """Make the group's slots [0, pos) open and [pos, C_g) blocked with one H2D of the changed slots."""
        g, c, mask = group.index, self.spec.decode_capacity, self._masks[group.index]
        opened = self._mask_open[g]
        if opened is None:  # unknown after a failed step: rewrite all of it
            self._copy(mask, self._mask_host + 2 * c, 2 * group.history, H2D)
            opened = 0
        if pos > opened:
            self._copy(mask + 2 * opened, self._mask_host, 2 * (pos - opened), H2D)
        elif pos < opened:
            self._copy(mask + 2 * pos, self._mask_host + 2 * c, 2 * (opened - pos), H2D)
        self._mask_open[g] = pos

    def _stage_decode(self, embed: np.ndarray, pos: int) -> None:
        self._dec_embed[:] = float32_to_bf16(embed)
        self._dec_index[0] = pos
        self._copy(self._dec, self._dec_host, self._layout.decode_block, H2D)

    def _stage_prefill(self, rows: np.ndarray, chunk: Chunk) -> None:
        group, n = chunk.group, chunk.count
        self._pre_embed[:n] = float32_to_bf16(rows)
        self._pre_embed[n:] = 0
        self._pre_index[:] = prefill_indices(chunk.start, n, group.tokens)[0]
        mask = float32_to_bf16(prefill_mask(chunk.start, group)).reshape(-1)
        self._pre_mask[: mask.size] = mask
        self._copy(self._pre, self._pre_host, self._layout.prefill_mask_offset + 2 * mask.size, H2D)

    def _run_layers(self, g: int, row: int, count: int) -> None:
        """Execute every layer in group g; the chunk's K/V land in cache rows row..row+count-1."""
        execute, set_out = self._rt.engine_execute, self._rt.engine_set_output_buffer_by_index
        offset, size, bound = row * self._layout.row_bytes, self._out_bytes[g], self._bound_row[g]
        for m, (model_id, context_id, io, k_index, v_index, k, v) in enumerate(self._plan[g]):
            if not self._d2d and bound[m] != row:
                ret = set_out(io, k_index, k + offset, size) or set_out(io, v_index, v + offset, size)
                if ret:
                    raise device_error(ret, "axcl.rt.engine_set_output_buffer_by_index", f"layer {m}")
                bound[m] = row
            started = monotonic()
            ret = execute(model_id, context_id, g, io)
            if ret:
                raise execute_error(ret, monotonic() - started, f"layer {m}, shape group {g}")
            if self._d2d:
                nbytes = count * self._layout.row_bytes
                self._copy(k + offset, self._scratch[0], nbytes, D2D)
                self._copy(v + offset, self._scratch[1], nbytes, D2D)

    def _logits(self, row: int) -> np.ndarray:
        post = self._post
        if row != self._post_row:  # the last real token of a prefill chunk sits at row n-1
            h2 = 2 * self.spec.hidden
            post.bind(0, "input", self._hidden[(self.spec.layers - 1) % 2] + row * h2, h2)
            self._post_row = row
        started = monotonic()
        ret = self._rt.engine_execute(post.model_id, post.context_id, 0, post.ios[0])
        if ret:
            raise execute_error(ret, monotonic() - started, "post (lm-head) model")
        self._copy(self._logits_host, self._logits_dev, self._layout.logits, D2H)
        return bf16_to_float32(self._logits_bits)  # a new array: the staging buffer is reused

    def _step(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except DeviceError:
            self._mask_open = dict.fromkeys(self._mask_open)  # device state unknown: rebuild on the next step
            raise

    # -- DecoderStack --------------------------------------------------------------------------

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        if not 0 <= pos < self.spec.decode_capacity:
            raise ContextOverflowError(f"position {pos} is outside the decode capacity {self.spec.decode_capacity}")
        embed = np.asarray(embed, dtype=np.float32).reshape(self.spec.hidden)
        self._begin()
        return self._step(self._decode, embed, pos)

    def _decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        group = select_decode_group(self.spec, pos)  # the smallest decode group that holds pos (ax-llm's rule)
        self._stage_decode(embed, pos)
        self._sync_decode_mask(pos, group)
        self._run_layers(group.index, pos, 1)
        return self._logits(0)

    def prefill(self, embeds: np.ndarray, start: int, want_logits: bool = True) -> np.ndarray | None:
        embeds = np.asarray(embeds, dtype=np.float32).reshape(-1, self.spec.hidden)
        plan = make_plan(self.spec, start, len(embeds), self.planner)
        self._begin()
        return self._step(self._prefill, embeds, start, plan, want_logits)

    def _prefill(self, embeds: np.ndarray, start: int, plan: list[Chunk], want_logits: bool) -> np.ndarray | None:
        last_row = 0
        for chunk in plan:
            rows = embeds[chunk.start - start: chunk.start - start + chunk.count]
            if chunk.group.is_decode:  # history beyond every prefill window: one token through decode
                self._stage_decode(rows[0], chunk.start)
                self._sync_decode_mask(chunk.start, chunk.group)
                last_row = 0
            else:
                self._stage_prefill(rows, chunk)
                last_row = chunk.count - 1
            self._run_layers(chunk.group.index, chunk.start, chunk.count)
        following = start + len(embeds)
        if following < self.spec.decode_capacity:  # ready for the next decode: no catch-up there
            self._sync_decode_mask(following, select_decode_group(self.spec, following))
        return self._logits(last_row) if want_logits else None

    def kv_save(self, length: int) -> KVSnapshot:
        if not 0 <= length <= self.spec.decode_capacity:
            raise ValueError(f"cannot save {length} KV rows of a capacity of {self.spec.decode_capacity}")
        self._begin()
        shape, nbytes = (length, self.spec.kv_dim), length * self._layout.row_bytes
        k = tuple(np.empty(shape, np.uint16) for _ in self._k)
        v = tuple(np.empty(shape, np.uint16) for _ in self._v)
        if length:
            for host, dev in zip((*k, *v), (*self._k, *self._v), strict=True):
                self._copy(host.ctypes.data, dev, nbytes, D2H)
        return KVSnapshot(length=length, k=k, v=v)

    def kv_restore(self, snapshot: KVSnapshot) -> None:
        n, layers = snapshot.length, self.spec.layers
        if not 0 <= n <= self.spec.decode_capacity or len(snapshot.k) != layers or len(snapshot.v) != layers:
            raise ValueError(f"snapshot of {len(snapshot.k)} layers x {n} rows does not fit this stack "
                             f"({layers} layers, capacity {self.spec.decode_capacity})")
        self._begin()
        for host, dev in zip((*snapshot.k, *snapshot.v), (*self._k, *self._v), strict=True):
            bits = host if host.dtype == np.uint16 else float32_to_bf16(host)  # float32 rows from another backend
            bits = np.ascontiguousarray(bits, dtype=np.uint16)
            if bits.shape != (n, self.spec.kv_dim):
                raise ValueError(f"snapshot rows are {bits.shape}, expected ({n}, {self.spec.kv_dim})")
            if n:
                self._copy(dev, bits.ctypes.data, bits.nbytes, H2D)

    def close(self) -> None:
        """Unload every model and free every buffer; idempotent, also run at interpreter exit."""
        self._finalizer()

    def __enter__(self) -> AxclDecoderStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AxclDecoderStack", "ContextOverflowError"]
