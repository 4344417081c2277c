"""AXCL constants and error codes, as pyAXCL 3.10.2 / axcl-runtime V3.10.2 define them (docs/sdk-notes.md).

Shared by the `axcl` backend, the typed errors and the simulated card so all three agree on the numbers.
pyaxcl returns `axclError` through a `c_int32` restype, so runtime codes arrive as negative Python ints;
`signed(code)` converts a documented unsigned hex code to what Python sees.

`DECLARED` holds every code the public V3.10.2 headers define (axcl-runtime: include/external/axcl_rt_*.h).
A few more constants below are built from the generic id table but declared nowhere (marked so): the
project uses them only as labels for errors it raises itself (its CMM budget refusal, its watchdog timeout);
the simulated card never returns them.
"""

from __future__ import annotations

AXCL_SUCC = 0
WRAPPER_GUARD = -1  # pyaxcl's own code: guard tripped (falsy pointer/handle, empty path) or exception swallowed

# Memory-copy kinds (axclrtMemcpyKind) and malloc policies (axclrtMemMallocPolicy).
AXCL_MEMCPY_HOST_TO_HOST = 0
AXCL_MEMCPY_HOST_TO_DEVICE = 1
AXCL_MEMCPY_DEVICE_TO_HOST = 2
AXCL_MEMCPY_DEVICE_TO_DEVICE = 3
AXCL_MEMCPY_HOST_PHY_TO_DEVICE = 4
AXCL_MEMCPY_DEVICE_TO_HOST_PHY = 5
AXCL_MEM_MALLOC_HUGE_FIRST = 0
AXCL_MEM_MALLOC_HUGE_ONLY = 1
AXCL_MEM_MALLOC_NORMAL_ONLY = 2

# axclrtEngineDataType: identical in pyaxcl, pyaxengine and the C header; not re-exported by axcl.rt.
AXCL_DATA_TYPE_NONE = 0
AXCL_DATA_TYPE_INT8 = 3
AXCL_DATA_TYPE_UINT8 = 4
AXCL_DATA_TYPE_INT16 = 5
AXCL_DATA_TYPE_UINT16 = 6
AXCL_DATA_TYPE_INT32 = 7
AXCL_DATA_TYPE_UINT32 = 8
AXCL_DATA_TYPE_INT64 = 9
AXCL_DATA_TYPE_FP16 = 13
AXCL_DATA_TYPE_BF16 = 14
AXCL_DATA_TYPE_FP32 = 15
DATA_TYPE_BYTES = {3: 1, 4: 1, 5: 2, 6: 2, 7: 4, 8: 4, 9: 8, 13: 2, 14: 2, 15: 4}

# Data layout: trust the C header (pyaxcl's own constants are off by one); never used in logic.
AXCL_DATA_LAYOUT_NONE, AXCL_DATA_LAYOUT_NHWC, AXCL_DATA_LAYOUT_NCHW = 0, 1, 2
AXCL_VNPU_DISABLE, AXCL_VNPU_ENABLE, AXCL_VNPU_BIG_LITTLE, AXCL_VNPU_LITTLE_BIG = 0, 1, 2, 3
AXCL_MODEL_TYPE_1CORE, AXCL_MODEL_TYPE_2CORE, AXCL_MODEL_TYPE_3CORE = 0, 1, 2

# Unsigned runtime error codes (axcl_base.h layout: 0x80 | module | 0x30 | sub-module | id).
ERR_DEVICE_NULL_POINTER = 0x80300102
ERR_DEVICE_UNSUPPORT = 0x80300104
ERR_DEVICE_OPEN = 0x8030010B
ERR_DEVICE_QUERY_DEVICE = 0x80300180
ERR_DEVICE_NO_CONNECT = 0x80300181
ERR_DEVICE_PROBE = 0x80300182
ERR_DEVICE_NOT_ACTIVE = 0x80300183
ERR_DEVICE_INVALID_ID = 0x80300184
ERR_DEVICE_NO_ACTIVE_DEVICE = 0x80300185
ERR_DEVICE_PORT_ALLOCATE = 0x80300186
ERR_DEVICE_REBOOT = 0x80300187
ERR_CONTEXT_NULL_POINTER = 0x80300202
ERR_CONTEXT_NO_BIND_CONTEXT = 0x80300284
ERR_STREAM_NULL_POINTER = 0x80300302
ERR_STREAM_TIMEOUT = 0x80300305
ERR_STREAM_SYNC_TIMEOUT = 0x80300383
ERR_MEMORY_NULL_POINTER = 0x80300502
ERR_MEMORY_EXECUTE_FAIL = 0x8030050C
ERR_MEMORY_NOT_DEVICE_MEMORY = 0x80300581
ERR_ENGINE_NULL_POINTER = 0x80300702
ERR_ENGINE_ILLEGAL_PARAM = 0x80300703
ERR_ENGINE_AXCL_UNSUPPORTED = 0x80300704
ERR_ENGINE_UNEXPECT_RESPONSE = 0x8030070A
ERR_ENGINE_EXECUTE_FAIL = 0x8030070C
ERR_ENGINE_INVALID_INDEX = 0x80300781
# NOT declared by the V3.10.2 headers: this project's own labels (see the module docstring).
ERR_MEMORY_ILLEGAL_PARAM = 0x80300503
ERR_MEMORY_NO_MEMORY = 0x80300507
ERR_ENGINE_TIMEOUT = 0x80300705
ERR_ENGINE_BUSY = 0x80300706
ERR_ENGINE_NO_MEMORY = 0x80300707
ERR_ENGINE_OPEN = 0x8030070B
# Native AX SDK codes the runtime passes through from the card (axcl-runtime: ax_sys_api.h, CMM section).
AX_ERR_CMM_NOTREADY = 0x800B0010
AX_ERR_CMM_NOMEM = 0x800B0018
# Get{Input,Output}SizeByIndex return the invalid-index code cast to uint64 instead of a size.
SIZE_INVALID_INDEX = 0xFFFFFFFF80300781

# Every code the V3.10.2 public headers declare (device, context, stream/event, memory, engine).
DECLARED = frozenset({
    0x80300102, 0x8030010B, 0x80300104, *range(0x80300180, 0x80300189),
    0x80300202, *range(0x80300281, 0x80300285),
    0x80300302, 0x80300305, *range(0x80300381, 0x80300385),
    0x80300502, 0x80300508, 0x80300509, 0x8030050A, 0x8030050C, 0x80300581,
    0x80300702, 0x80300703, 0x80300704, 0x80300708, 0x80300709, 0x8030070A, 0x8030070C, 0x80300781,
})
NATIVE_NAMES = {AX_ERR_CMM_NOTREADY: "AX_ERR_CMM_NOTREADY", AX_ERR_CMM_NOMEM: "AX_ERR_CMM_NOMEM"}
NATIVE_NOMEM_ID = 0x18  # AX_ERR_NOMEM, the id byte of every native "no memory" code


def is_native(ret: int) -> bool:
    """A device-side AX SDK code passed through (its second byte is not the AXCL id 0x30)."""
    code = unsigned(ret)
    return bool(code & 0x80000000) and (code >> 16) & 0xFF != 0x30


SUBMODULES = {0x01: "DEVICE", 0x02: "CONTEXT", 0x03: "STREAM", 0x04: "TASK", 0x05: "MEMORY", 0x06: "CONFIG",
              0x07: "ENGINE", 0x08: "SYSLOG", 0x09: "SYSCTRL", 0x0A: "LATENCY", 0x0B: "P2P", 0x0C: "USRWORK"}
GENERIC_IDS = {0x01: "FAIL", 0x02: "NULL_POINTER", 0x03: "ILLEGAL_PARAM", 0x04: "UNSUPPORT", 0x05: "TIMEOUT",
               0x06: "BUSY", 0x07: "NO_MEMORY", 0x08: "ENCODE", 0x09: "DECODE", 0x0A: "UNEXPECT_RESPONSE",
               0x0B: "OPEN", 0x0C: "EXECUTE_FAIL"}
SPECIFIC_NAMES = {
    0x80300180: "DEVICE_QUERY_DEVICE", 0x80300181: "DEVICE_NO_CONNECT", 0x80300182: "DEVICE_PROBE",
    0x80300183: "DEVICE_NOT_ACTIVE", 0x80300184: "DEVICE_INVALID_ID", 0x80300185: "DEVICE_NO_ACTIVE_DEVICE",
    0x80300186: "DEVICE_PORT_ALLOCATE", 0x80300187: "DEVICE_REBOOT", 0x80300188: "DEVICE_PORT_DESTROY",
    0x80300281: "CONTEXT_CREATE", 0x80300282: "CONTEXT_DESTROY", 0x80300283: "CONTEXT_BIND_THREAD",
    0x80300284: "CONTEXT_NO_BIND_CONTEXT", 0x80300381: "STREAM_CREATE", 0x80300382: "STREAM_DESTROY",
    0x80300383: "STREAM_SYNC_TIMEOUT", 0x80300581: "MEMORY_NOT_DEVICE_MEMORY", 0x80300781: "ENGINE_INVALID_INDEX",
}


def signed(code: int) -> int:
    """Unsigned 32-bit code -> the negative int a c_int32 restype gives Python (0x8030010B -> -2144337653)."""
    code &= 0xFFFFFFFF
    return code - (1 << 32) if code & 0x80000000 else code


def unsigned(ret: int) -> int:
    return ret & 0xFFFFFFFF


def code_name(ret: int) -> str:
    """Symbolic name of a runtime code, e.g. 'AXCL_ERR_ENGINE_EXECUTE_FAIL'; a best effort for unknown ones."""
    if ret == WRAPPER_GUARD:
        return "PYAXCL_WRAPPER_GUARD"
    code = unsigned(ret)
    if code in SPECIFIC_NAMES:
        return f"AXCL_ERR_{SPECIFIC_NAMES[code]}"
    if (code >> 16) & 0xFF != 0x30:
        return NATIVE_NAMES.get(code, "AX_NATIVE_ERROR")  # passed through from the device's own SDK
    sub, errid = (code >> 8) & 0xFF, code & 0xFF
    return f"AXCL_ERR_{SUBMODULES.get(sub, f'SUB{sub:02X}')}_{GENERIC_IDS.get(errid, f'{errid:02X}')}"
