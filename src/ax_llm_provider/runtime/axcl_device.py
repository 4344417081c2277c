"""One process's hold on one card through pyaxcl: init, device, NPU engine init and the runtime context.

Shared (reference-counted) by every decoder stack opened on the same `axcl` module and device index, so
two models on one card do not initialise it twice; the last release finalises it (docs/sdk-notes.md,
"Teardown": always unload/free/reset/finalize, or CMM may stay allocated after the process is gone).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

from . import axcl_codes as codes
from .errors import DeviceError, check, device_error

log = logging.getLogger(__name__)


def import_axcl() -> Any:
    """The real pyaxcl module, imported only when a card backend is opened."""
    try:
        import axcl
    except ImportError as exc:
        raise ImportError(
            "the axcl backend needs pyaxcl (module `axcl`), which is not on PyPI: install the pyAXCL 3.10.x wheel "
            "that ships with the AXCL runtime (AXERA-TECH/axcl-runtime, out/python/pyAXCL-3.10.2-py3-none-any.whl; "
            "docs/hardware.md), or use the simulated card for tests"
        ) from exc
    except OSError as exc:  # pyaxcl loads libaxcl_*.so at import time
        raise ImportError(
            f"pyaxcl is installed but cannot load the AXCL libraries ({exc}); install the axclhost package "
            "and check AXCL_LIB_PATH (default /usr/lib/axcl)"
        ) from exc
    return axcl


def value(result: tuple[Any, ...], function: str, detail: str = "") -> Any:
    """Unpack a pyaxcl `(value, ret)` tuple, raising the typed error on a non-zero ret or a NULL value."""
    *values, ret = result
    check(ret, function, detail)
    if values[0] is None:
        raise DeviceError(codes.WRAPPER_GUARD, function, f"{detail} returned NULL with ret 0")
    return values[0] if len(values) == 1 else tuple(values)


class AxclRuntime:
    """axcl.init + set_device + engine_init for one device; `bind_thread()` before device calls."""

    _shared: ClassVar[dict[tuple[int, int], AxclRuntime]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, axcl: Any, device_index: int, config: str | None) -> None:
        self.axcl = axcl
        self.rt = axcl.rt
        self.device_index = device_index
        self._refs = 0
        self._local = threading.local()
        self._engine_initialised = False
        check(axcl.init(config), "axcl.init", f"config {config or 'default'}")
        try:
            devices = value(self.rt.get_device_list(), "axcl.rt.get_device_list")
            if not 0 <= device_index < len(devices):
                raise device_error(codes.signed(codes.ERR_DEVICE_INVALID_ID), "axcl.rt.get_device_list",
                                   f"card index {device_index} asked for but {len(devices)} card(s) found: {devices}")
            self.device_id = int(devices[device_index])  # a bus-derived id, not the index
            check(self.rt.set_device(self.device_id), "axcl.rt.set_device", f"device id {self.device_id}")
            ret = self.rt.engine_init(codes.AXCL_VNPU_DISABLE)
            if ret == 0:
                self._engine_initialised = True
            else:
                kind, kind_ret = self.rt.engine_get_vnpu_kind()
                if kind_ret != 0:
                    raise device_error(ret, "axcl.rt.engine_init")
                log.warning("NPU engine already initialised (VNPU kind %s) by another user; sharing it", kind)
            self.context = value(self.rt.get_current_context(), "axcl.rt.get_current_context")
            self._local.bound = True
        except BaseException:
            self._finalize()
            raise
        log.info("AXCL device %d (index %d) ready", self.device_id, device_index)

    @classmethod
    def acquire(cls, axcl: Any, device_index: int = 0, config: str | None = None) -> AxclRuntime:
        with cls._lock:
            key = (id(axcl), device_index)
            runtime = cls._shared.get(key)
            if runtime is None:
                runtime = cls._shared[key] = cls(axcl, device_index, config)
            runtime._refs += 1
            return runtime

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._refs > 0:
                return
            self._shared.pop((id(self.axcl), self.device_index), None)
        self._finalize()

    def bind_thread(self, force: bool = False) -> None:
        """Make the runtime context current on the calling thread (once per thread, or again if `force`)."""
        if force or not getattr(self._local, "bound", False):
            check(self.rt.set_current_context(self.context), "axcl.rt.set_current_context")
            self._local.bound = True

    def _finalize(self) -> None:
        steps = []
        if self._engine_initialised:
            steps.append(("axcl.rt.engine_finalize", self.rt.engine_finalize))
        if hasattr(self, "device_id"):
            steps.append(("axcl.rt.reset_device", lambda: self.rt.reset_device(self.device_id)))
        steps.append(("axcl.finalize", self.axcl.finalize))
        for name, step in steps:  # pyaxcl never raises: each step reports through its ret
            ret = step()
            if ret != 0:
                log.warning("%s during teardown: %s", name, device_error(ret, name))
        self._engine_initialised = False
