"""`axclrtGetDeviceProperties` and `axclrtRebootDevice` through ctypes, whatever the pyaxcl version.

pyAXCL 3.10 also wraps the first as `axcl.rt.get_device_properties` (the CMM guard uses it when present);
2.25 has no wrapper, and neither version wraps the reboot (exported, but absent from the public header).

Works on the real `libaxcl_rt.so` (a `ctypes.CDLL`) and on the simulated card's `lib_rt` stand-in.
Units as the runtime reports them: temperature in milli-degrees C, memory sizes in KB, loads x 100.
Note: the real call activates and then resets the device and runs shell commands on the card (slow,
~1 s worst case per sub-command): call it from a monitor thread, not between two engine calls.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from .errors import check

DEFAULT_LIB = os.path.join(os.getenv("AXCL_LIB_PATH", "/usr/lib/axcl"), "libaxcl_rt.so")


class AxclrtDeviceProperties(ctypes.Structure):
    """axcl_rt_type.h; sizeof == 240 on x86_64 and aarch64."""

    _fields_ = [
        ("swVersion", ctypes.c_char * 64),
        ("uid", ctypes.c_uint64),
        ("pciDomain", ctypes.c_uint32),
        ("pciBusID", ctypes.c_uint32),
        ("pciDeviceID", ctypes.c_uint32),
        ("temperature", ctypes.c_int32),
        ("totalMemSize", ctypes.c_uint32),
        ("freeMemSize", ctypes.c_uint32),
        ("totalCmmSize", ctypes.c_uint32),
        ("freeCmmSize", ctypes.c_uint32),
        ("cpuLoading", ctypes.c_uint32),
        ("npuLoading", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 32),
    ]


@dataclass(frozen=True)
class DeviceProperties:
    sw_version: str
    pci_bus_id: int
    temperature_c: float
    total_cmm_kb: int
    free_cmm_kb: int
    total_mem_kb: int
    free_mem_kb: int
    cpu_load_percent: float
    npu_load_percent: float


def load_lib(path: str = DEFAULT_LIB) -> Any:
    """Open libaxcl_rt.so and declare the two functions used here."""
    lib = ctypes.CDLL(path)
    lib.axclrtGetDeviceProperties.argtypes = [ctypes.c_int32, ctypes.POINTER(AxclrtDeviceProperties)]
    lib.axclrtGetDeviceProperties.restype = ctypes.c_int32
    lib.axclrtRebootDevice.argtypes = [ctypes.c_int32]
    lib.axclrtRebootDevice.restype = ctypes.c_int32
    return lib


def get_device_properties(lib: Any, device_id: int) -> DeviceProperties:
    """Read temperature, CMM and load of card `device_id` (a bus id from get_device_list, not an index)."""
    raw = AxclrtDeviceProperties()
    check(int(lib.axclrtGetDeviceProperties(device_id, ctypes.byref(raw))), "axclrtGetDeviceProperties")
    return DeviceProperties(
        sw_version=raw.swVersion.decode(errors="replace"),
        pci_bus_id=raw.pciBusID,
        temperature_c=raw.temperature / 1000.0,
        total_cmm_kb=raw.totalCmmSize,
        free_cmm_kb=raw.freeCmmSize,
        total_mem_kb=raw.totalMemSize,
        free_mem_kb=raw.freeMemSize,
        cpu_load_percent=raw.cpuLoading / 100.0,
        npu_load_percent=raw.npuLoading / 100.0,
    )


def reboot_device(lib: Any, device_id: int) -> None:
    """Firmware reboot of the card; every model must be loaded again afterwards."""
    check(int(lib.axclrtRebootDevice(device_id)), "axclrtRebootDevice")
