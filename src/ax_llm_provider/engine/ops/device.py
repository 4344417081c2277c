"""Access to the card: the module the backends drive, the single-owner lock, the runtime library, reboot.

The `axcl` module (the real one, or a SimCard for the simulated backend) is resolved on the first device
call of a card backend, after taking the owner lock, and wrapped in a `WatchedAxcl` so every execute is
timed for the hang watch (recovery.py). `lib_rt()` is libaxcl_rt through ctypes: device properties for
the health monitor and the firmware reboot for the recovery ladder.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ... import process
from ...runtime import axcl_codes as codes
from ...runtime.axcl_props import get_device_properties, reboot_device
from ...runtime.errors import DeviceError, DeviceOfflineError
from ..clock import SYSTEM_CLOCK, Clock
from .health import DeviceReading, offline_reading, reading_from_properties
from .recovery import DeviceActivity, RecoveryPolicy, WatchedAxcl

log = logging.getLogger(__name__)
CARD_BACKENDS = ("axcl", "simulated")


class CardAccess:
    """One card (`device` index) as the engine's backends and the supervisor see it."""

    def __init__(self, backend: str, device: int, *, card: Any | None, device_lock: bool | None,
                 activity: DeviceActivity, policy: RecoveryPolicy,
                 on_offline: Callable[[DeviceReading], None],
                 on_locked: Callable[[process.DeviceLock], None] | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        """card: the axcl module or SimCard to drive (None: import axcl / a new SimCard); device_lock: take
        the owner lock (None: for the axcl and axengine backends); on_offline: the runtime's status callback."""
        self.backend, self.device = backend, device
        self.card = card
        self.lock_wanted = device_lock
        self.lock: process.DeviceLock | None = None
        self.activity, self.policy, self.clock = activity, policy, clock
        self.axcl = WatchedAxcl(self._resolve, activity)
        self.mutex = threading.RLock()  # load/unload/reboot hold it; the monitor's read skips while held
        self.device_id: int | None = None
        self.card_backend: str | None = None  # "axcl" or "simulated" once a stack was opened on a card
        self._on_offline = on_offline
        self._on_locked = on_locked  # the supervisor starts the status channel (status_channel.py) here
        self._lib: Any = None
        self._status_callback: Any = None  # the ctypes callback object, kept alive while registered

    # ---- the owner lock and the module -------------------------------------------------------------

    def take_lock(self) -> None:
        if self.lock is None:
            self.lock = process.DeviceLock(f"card{self.device}")
        self.lock.acquire()
        if self._on_locked is not None:
            self._on_locked(self.lock)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _resolve(self) -> Any:
        """The module behind `self.axcl`: taken on the first device call of a card backend."""
        if self.backend == "simulated":
            if self.card is None:
                from ...runtime.simcard import card_from_env

                self.card = card_from_env()  # $AX_LLM_SIM_PRESET, $AX_LLM_SIM_FAULTS
            if self.lock_wanted:
                self.take_lock()
            return self.card
        if self.lock_wanted is not False:
            self.take_lock()
        if self.card is not None:
            return self.card
        from ...runtime.axcl_device import import_axcl

        return import_axcl()

    def lib_rt(self) -> Any:
        """libaxcl_rt.so through ctypes (or the SimCard's stand-in): device properties and reboot."""
        if self._lib is None:
            module = self.axcl.module
            lib = getattr(module, "lib_rt", None)
            if lib is None:
                from ...runtime.axcl_props import load_lib

                lib = load_lib()
            self._lib = lib
        return self._lib

    def opened(self, backend: str) -> None:
        """A model was opened with `backend`: on a card, learn its id and watch its status."""
        if backend not in CARD_BACKENDS:
            return
        self.card_backend = backend
        self.learn_device_id()
        self._watch_status()

    def _watch_status(self) -> None:
        """Offline notification from the runtime where it has `axclrtRegisterDeviceStatusCallback` (absent
        from V3.10.2: then the monitor's polling is the only source)."""
        if self._status_callback is not None:
            return
        register = getattr(self.lib_rt(), "axclrtRegisterDeviceStatusCallback", None)
        if register is None:
            log.debug("axclrtRegisterDeviceStatusCallback is not in this runtime: offline is found by polling")
            self._status_callback = False
            return

        def on_status(device: int, status: int, userdata: Any) -> None:
            if status == 1:  # AXCL_DEVICE_STATUS_OFFLINE
                log.error("the runtime reports card %d offline", device)
                self._on_offline(DeviceReading(online=False, error=f"runtime status callback: device {device} offline"))

        self._status_callback = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p)(on_status)
        ret = register(self._status_callback, None)
        if ret != 0:
            log.warning("axclrtRegisterDeviceStatusCallback -> %d: offline is found by polling", ret)

    def learn_device_id(self) -> int | None:
        devices, ret = self.axcl.rt.get_device_list()
        index = self.device
        if ret == 0 and 0 <= index < len(devices):
            self.device_id = int(devices[index])
        elif self.device_id is None:  # a card that does not answer still has its bus id (the SimCard's list)
            known = getattr(self.axcl.module, "device_ids", None)
            if known and 0 <= index < len(known):
                self.device_id = int(known[index])
        return self.device_id

    # ---- reading, ownership, reboot ----------------------------------------------------------------

    def read(self) -> DeviceReading:
        started = time.perf_counter()
        assert self.device_id is not None
        try:
            props = get_device_properties(self.lib_rt(), self.device_id)
        except DeviceError as exc:
            return offline_reading(exc, started)
        return reading_from_properties(props, started)

    def raise_if_owned(self, exc: DeviceError) -> None:
        """AXCL 0x80300186 (the card's port is taken): say which process holds the card."""
        if codes.unsigned(exc.code) != codes.ERR_DEVICE_PORT_ALLOCATE:
            return
        owners = process.device_users()
        recorded = self.lock.owner() if self.lock is not None else None
        if recorded is not None and recorded.pid != os.getpid():
            owners.insert(0, recorded)
        card = f"card {self.device}"
        raise process.DeviceInUseError(process.in_use_message(card, owners, code="Set AXCL device failed "
                                                              "{0x80300186}"), owners[0] if owners else None) from exc

    def can_reboot(self) -> bool:
        return self.backend in (*CARD_BACKENDS, "auto")

    def reboot(self) -> None:
        """Firmware reboot of the card (axclrtRebootDevice) and wait until it answers; raises DeviceError."""
        if not self.can_reboot():
            raise DeviceOfflineError(codes.WRAPPER_GUARD, "axclrtRebootDevice",
                                     f"the {self.backend} backend has no firmware reboot here")
        with process.critical_section("rebooting the card"), self.mutex:
            axcl = self.axcl
            inited = axcl.init(None) == 0
            try:
                device_id = self.device_id if self.device_id is not None else self.learn_device_id()
                if device_id is None:
                    raise DeviceOfflineError(codes.signed(codes.ERR_DEVICE_INVALID_ID), "axclrtRebootDevice",
                                             "the card's device id is unknown (it never answered)")
                log.warning("rebooting the NPU card (device id %d)", device_id)
                process.sd_notify("STATUS=rebooting the NPU card")
                reboot_device(self.lib_rt(), device_id)
                self._wait_for_card(device_id)
            finally:
                if inited:
                    axcl.finalize()
        log.warning("the NPU card answers again after its reboot")

    def reboot_now(self) -> None:
        """axclrtRebootDevice without waiting or locking (the monitor thread, to unblock a hung execute)."""
        assert self.device_id is not None
        reboot_device(self.lib_rt(), self.device_id)

    def _wait_for_card(self, device_id: int) -> None:
        deadline = self.clock.monotonic() + self.policy.reboot_wait_s
        while True:
            try:
                get_device_properties(self.lib_rt(), device_id)
                self.activity.answered()
                return
            except DeviceError:
                if self.clock.monotonic() >= deadline:
                    raise
            self.clock.sleep(self.policy.reboot_poll_s)

    def label(self, model_backends: set[str]) -> str:
        """What `health().device` says: "card N", "simulated card N" or "cpu"."""
        backend = self.card_backend or self.backend
        if backend == "simulated":
            return f"simulated card {self.device}"
        if backend in ("axcl", "axengine") or (backend == "auto" and self.card_backend):
            return f"card {self.device}"
        if backend == "onnx" or "onnx" in model_backends:
            return "cpu"
        return f"card {self.device}" if backend == "auto" and model_backends else "cpu"
