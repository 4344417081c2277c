"""The CMM guard: refuse a load that would overflow the card's CMM pool, and never skip that check silently.

An overflow has crashed the NPU driver (ax-llm issue #21), so the backend reads the free CMM before loading.
Sources, in order (docs/sdk-notes.md, "CMM"):
  1. AXCL_SYS_MemQueryStatus (`axcl.sys.mem_query_status`, remain_size in KB), after AXCL_SYS_Init as every
     vendor sample does before SYS calls; the init is undone when the stack closes;
  2. pyAXCL 3.10's `axcl.rt.get_device_properties(device_id)` (free_cmm_size, KB). The runtime activates and
     resets the device inside that call, so the calling thread's context is bound again afterwards.
If neither answers, a warning says the load goes ahead unchecked.
"""

from __future__ import annotations

import logging

from . import axcl_codes as codes
from .axcl_device import AxclRuntime
from .errors import DeviceMemoryError, device_error

log = logging.getLogger(__name__)
MB = 1 << 20


class CmmGuard:
    def __init__(self, runtime: AxclRuntime) -> None:
        self.runtime = runtime
        self._sys_inited = False

    def free_bytes(self) -> int | None:
        """Free CMM in bytes, or None (after a warning) when the card will not say."""
        sys_api, rt = self.runtime.axcl.sys, self.runtime.rt
        if not self._sys_inited:
            self._sys_inited = sys_api.init() == 0
        status, ret = sys_api.mem_query_status() if self._sys_inited else ({}, codes.WRAPPER_GUARD)
        if ret == 0 and status:
            return int(status["remain_size"]) * 1024
        why = str(device_error(ret, "axcl.sys.mem_query_status"))
        properties = getattr(rt, "get_device_properties", None)  # pyAXCL >= 3.10
        if properties is not None:
            props, props_ret = properties(self.runtime.device_id)
            self.runtime.bind_thread(force=True)
            if props_ret == 0 and "free_cmm_size" in props:
                return int(props["free_cmm_size"]) * 1024
            why += f"; {device_error(props_ret, 'axcl.rt.get_device_properties')}"
        log.warning("the CMM guard cannot read the card's free memory (%s); loading without the budget check", why)
        return None

    def require(self, need: int | None, what: str, floor_mb: int) -> None:
        """Raise DeviceMemoryError unless `need` bytes plus the floor fit in the free CMM."""
        if need is None:
            return
        remain = self.free_bytes()
        if remain is not None and need + floor_mb * MB > remain:
            raise DeviceMemoryError(codes.signed(codes.ERR_MEMORY_NO_MEMORY), "CMM budget check",
                                    f"{what} need {need / MB:.0f} MB plus a {floor_mb} MB floor, "
                                    f"{remain / MB:.0f} MB of CMM remain")

    def close(self) -> None:
        if self._sys_inited:
            self._sys_inited = False
            ret = self.runtime.axcl.sys.deinit()
            if ret != 0:
                log.warning("closing the CMM guard: %s", device_error(ret, "axcl.sys.deinit"))
