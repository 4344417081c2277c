"""`axcl.rt` memory functions of the simulated card (docs/sdk-notes.md, "AXCL runtime").

`malloc_host` is plain host memory, as in V3.10.2 (libc malloc): transfers from it cost what transfers
from any other host buffer cost, unless the legacy timing model (which assumed it pinned) is chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import axcl_codes as codes
from .api import GUARD, api
from .faults import MEMCPY_KIND_NAMES
from .memory import Fail

if TYPE_CHECKING:
    from .card import SimCard


class MemoryApi:
    card: SimCard

    def _malloc(self, size: int, policy: int) -> tuple[int | None, int]:
        card = self.card
        card.current_context()
        if policy not in (codes.AXCL_MEM_MALLOC_HUGE_FIRST, codes.AXCL_MEM_MALLOC_HUGE_ONLY,
                          codes.AXCL_MEM_MALLOC_NORMAL_ONLY, 3):
            raise Fail(codes.ERR_MEMORY_EXECUTE_FAIL, f"malloc policy {policy}")
        card.reserve_cmm(int(size), codes.AX_ERR_CMM_NOMEM)  # the device's own CMM code, passed through
        return (card.memory.alloc(size), 0)

    @api((None, GUARD), context=True, rpc=True)
    def malloc(self, size: int, policy: int) -> tuple[int | None, int]:
        return self._malloc(size, policy)

    @api((None, GUARD), context=True, rpc=True)
    def malloc_cached(self, size: int, policy: int) -> tuple[int | None, int]:
        return self._malloc(size, policy)

    @api(GUARD, context=True, rpc=True)
    def free(self, dev_ptr: int) -> int:
        if not dev_ptr:
            return GUARD
        self.card.current_context()
        self.card.memory.free(dev_ptr)
        return 0

    def _exact_base(self, dev_ptr: int) -> int:
        if not dev_ptr:
            return GUARD
        self.card.current_context()
        if dev_ptr not in self.card.memory.blocks:
            raise Fail(codes.ERR_MEMORY_NOT_DEVICE_MEMORY)
        return 0

    @api(GUARD, context=True, rpc=True)
    def mem_flush(self, dev_ptr: int, size: int) -> int:
        return self._exact_base(dev_ptr)

    @api(GUARD, context=True, rpc=True)
    def mem_invalidate(self, dev_ptr: int, size: int) -> int:
        return self._exact_base(dev_ptr)

    @api((None, GUARD), host_only=True)
    def malloc_host(self, size: int) -> tuple[int | None, int]:
        return (self.card.memory.alloc_host(size), 0)

    @api(GUARD, host_only=True)
    def free_host(self, host_ptr: int) -> int:
        if not host_ptr:
            return GUARD
        self.card.memory.free_host(host_ptr)
        return 0  # libc free: always succeeds

    @api(GUARD, context=True)
    def memset(self, dev_ptr: int, value: int, count: int) -> int:
        if not dev_ptr:
            return GUARD
        card = self.card
        card.current_context()
        card.memory.fill(dev_ptr, value, count)
        card.clock.charge("memset", card.timing.memset_fixed_ms)
        return 0

    @api(GUARD)
    def memcpy(self, dst_ptr: int, src_ptr: int, count: int, kind: int) -> int:
        if not dst_ptr or not src_ptr:
            return GUARD
        card = self.card
        if kind != codes.AXCL_MEMCPY_HOST_TO_HOST:
            card.current_context()
        card.memory.copy(dst_ptr, src_ptr, count, kind)
        name = MEMCPY_KIND_NAMES[kind]
        card.counters.bytes_by_kind[name] += count
        card.counters.copies_by_kind[name] += 1
        timing = card.timing
        if kind == codes.AXCL_MEMCPY_HOST_TO_DEVICE:
            card.clock.charge("h2d", timing.transfer_ms(count, card.memory.is_host_alloc(src_ptr, count)))
        elif kind == codes.AXCL_MEMCPY_DEVICE_TO_HOST:
            card.clock.charge("d2h", timing.transfer_ms(count, card.memory.is_host_alloc(dst_ptr, count)))
        elif kind == codes.AXCL_MEMCPY_DEVICE_TO_DEVICE:
            card.clock.charge("d2d", timing.d2d_ms(count))
        return 0

    @api(GUARD, context=True, rpc=True)
    def memcmp(self, dev_ptr1: int, dev_ptr2: int, count: int) -> int:
        if not dev_ptr1 or not dev_ptr2:
            return GUARD
        self.card.current_context()
        return self.card.memory.compare(dev_ptr1, dev_ptr2, count)
