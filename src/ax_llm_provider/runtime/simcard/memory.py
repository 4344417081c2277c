"""Device memory of the simulated card: numpy buffers addressed by fake integer device pointers.

Device pointers live at and above DEVICE_BASE (2**56), far above any user-space host address, so the
card can tell a device pointer from a host one. Host pointers are real process addresses, exactly as
pyaxcl takes them: `arr.ctypes.data` for a numpy array (keep the array alive across the call), or
the int returned by `malloc_host` (plain host memory, as libc malloc is in V3.10.2; only the legacy
timing model treats it as pinned).

Interior pointers (base + offset) are accepted by memcpy/memset, as on the card. Unlike the card, every
access is bounds-checked against its allocation and fails with MEMORY_EXECUTE_FAIL instead of silently
corrupting a neighbour: a strictness that catches backend bugs the hardware would hide.
"""

from __future__ import annotations

import bisect
import ctypes
from dataclasses import dataclass

import numpy as np

from .. import axcl_codes as codes

DEVICE_BASE = 1 << 56
_ALIGN = 4096
# memcpy kind -> (dst is device, src is device)
_SIDES = {codes.AXCL_MEMCPY_HOST_TO_HOST: (False, False), codes.AXCL_MEMCPY_HOST_TO_DEVICE: (True, False),
          codes.AXCL_MEMCPY_DEVICE_TO_HOST: (False, True), codes.AXCL_MEMCPY_DEVICE_TO_DEVICE: (True, True)}


class Fail(Exception):
    """Internal: make the current API call return this runtime code (never escapes the card)."""

    def __init__(self, code: int, why: str = "") -> None:
        super().__init__(f"0x{code:08X} {why}")
        self.code = code


@dataclass
class Block:
    base: int
    data: np.ndarray  # uint8, the bytes
    address: int  # host address of data, for ctypes.memmove


class DeviceMemory:
    def __init__(self, dirty: bool = False) -> None:
        self.dirty = dirty  # fill fresh allocations with 0xFF (bf16 NaN) like uninitialised CMM could be
        self.blocks: dict[int, Block] = {}
        self._bases: list[int] = []
        self._next = DEVICE_BASE
        self.used = 0
        self._pinned: dict[int, np.ndarray] = {}
        self._pinned_bases: list[int] = []

    # -- device allocations --------------------------------------------------------------------

    def alloc(self, size: int) -> int:
        size = max(int(size), 1)
        data = np.full(size, 0xFF, dtype=np.uint8) if self.dirty else np.zeros(size, dtype=np.uint8)
        base = self._next
        self._next += (size + 2 * _ALIGN - 1) // _ALIGN * _ALIGN  # a guard gap between blocks
        self.blocks[base] = Block(base, data, data.ctypes.data)
        bisect.insort(self._bases, base)
        self.used += size
        return base

    def free(self, base: int) -> None:
        block = self.blocks.pop(base, None)
        if block is None:
            raise Fail(codes.ERR_MEMORY_NOT_DEVICE_MEMORY, f"free of {base:#x}: not the base of an allocation")
        self._bases.remove(base)
        self.used -= block.data.size

    def clear(self) -> None:
        self.blocks.clear()
        self._bases.clear()
        self._pinned.clear()
        self._pinned_bases.clear()
        self.used = 0

    def resolve(self, ptr: int, count: int) -> tuple[Block, int]:
        """The block holding [ptr, ptr+count) and the offset of ptr in it."""
        i = bisect.bisect_right(self._bases, ptr) - 1
        if i >= 0:
            block = self.blocks[self._bases[i]]
            offset = ptr - block.base
            if offset + count <= block.data.size:
                return block, offset
        raise Fail(codes.ERR_MEMORY_EXECUTE_FAIL, f"device range {ptr:#x}+{count} is outside every allocation")

    def view(self, ptr: int, count: int) -> np.ndarray:
        block, offset = self.resolve(ptr, count)
        return block.data[offset:offset + count]

    def address(self, ptr: int, count: int) -> int:
        block, offset = self.resolve(ptr, count)
        return block.address + offset

    @staticmethod
    def is_device(ptr: int) -> bool:
        return ptr >= DEVICE_BASE

    # -- host memory ---------------------------------------------------------------------------

    def alloc_host(self, size: int) -> int:
        data = np.zeros(max(int(size), 1), dtype=np.uint8)
        ptr = data.ctypes.data
        self._pinned[ptr] = data
        bisect.insort(self._pinned_bases, ptr)
        return ptr

    def free_host(self, ptr: int) -> None:
        if self._pinned.pop(ptr, None) is not None:
            self._pinned_bases.remove(ptr)

    def is_host_alloc(self, ptr: int, count: int) -> bool:
        i = bisect.bisect_right(self._pinned_bases, ptr) - 1
        if i < 0:
            return False
        base = self._pinned_bases[i]
        return ptr + count <= base + self._pinned[base].size

    # -- copies --------------------------------------------------------------------------------

    def copy(self, dst: int, src: int, count: int, kind: int) -> None:
        """Move bytes for memcpy `kind`; raises Fail when a pointer is on the wrong side."""
        dst_dev, src_dev = self.is_device(dst), self.is_device(src)
        wanted = _SIDES
        if kind not in wanted:
            raise Fail(codes.ERR_MEMORY_EXECUTE_FAIL, f"memcpy kind {kind} is not simulated")
        if wanted[kind] != (dst_dev, src_dev):
            raise Fail(codes.ERR_MEMORY_EXECUTE_FAIL,
                       f"memcpy kind {kind} with dst {'device' if dst_dev else 'host'} / src "
                       f"{'device' if src_dev else 'host'} pointers")
        if count <= 0:
            return
        d = self.address(dst, count) if dst_dev else dst
        s = self.address(src, count) if src_dev else src
        ctypes.memmove(d, s, count)

    def fill(self, ptr: int, value: int, count: int) -> None:
        self.view(ptr, count)[:] = value & 0xFF

    def compare(self, a: int, b: int, count: int) -> int:
        x, y = self.view(a, count), self.view(b, count)
        diff = np.flatnonzero(x != y)
        return 0 if diff.size == 0 else int(x[diff[0]]) - int(y[diff[0]])
