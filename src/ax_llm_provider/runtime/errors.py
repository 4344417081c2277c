"""Typed device errors: every non-zero `ret` from the AXCL runtime becomes one of these.

The engine's recovery ladder dispatches on the class (retry, reset and reload, reboot the card, give up),
so the mapping lives here, once. Messages name the call, the code in hex and what to do.

The class comes from the code where the headers say what it means (device/port codes: offline), and from
the call and its context where they do not: the V3.10.2 headers declare no "out of memory" or "timeout"
code, so a failed `malloc` is a memory error whatever its code (`memory_error`), a failed model load is one
when CMM turns out to be short (the backend checks), and hangs are the engine watchdog's to name
(docs/sdk-notes.md, "Error codes").
"""

from __future__ import annotations

from . import axcl_codes as codes


class DeviceError(RuntimeError):
    """A call into the NPU runtime failed.

    code:     the signed `ret` as pyaxcl returned it (or -1 for pyaxcl's own guard).
    function: the SDK function that failed, e.g. 'axcl.rt.engine_execute'.
    hint:     what the operator or the engine should do about it.
    """

    default_hint = "check `axcl-smi` and the kernel log; if it repeats, reset the card and reload the model"

    def __init__(self, code: int, function: str, detail: str = "", hint: str | None = None) -> None:
        self.code = code
        self.function = function
        self.hex_code = "-1 (pyaxcl guard)" if code == codes.WRAPPER_GUARD else f"0x{codes.unsigned(code):08X}"
        self.name = codes.code_name(code)
        self.hint = hint or self.default_hint
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{function} failed with {self.hex_code} {self.name}{extra}; {self.hint}")


class DeviceOfflineError(DeviceError):
    """The card is gone, wedged or owned by another process."""

    default_hint = (
        "the card is not reachable: check `lspci | grep -i axera`, that no other process owns it "
        "(`axcl-smi` lists the PID), then reboot the card (`axcl-smi reboot -d 0` / axclrtRebootDevice) and reload"
    )


class DeviceMemoryError(DeviceError):
    """CMM (the card's NPU memory pool) is exhausted, or a buffer is not device memory."""

    default_hint = (
        "the card's CMM pool is short: unload other models, use a smaller bundle or context, or wait a few "
        "seconds after a crash (CMM is released late) and retry"
    )


class DeviceTimeoutError(DeviceError):
    """A call did not complete in time (the NPU may be hung)."""

    default_hint = "the NPU did not answer in time: reset the card and reload the model; reboot it if this repeats"


class DeviceBusyError(DeviceError):
    """The runtime or NPU is busy or already initialised by someone else."""

    default_hint = "another user holds the NPU: make sure only one process drives the card"


_OFFLINE = {codes.ERR_DEVICE_OPEN, codes.ERR_DEVICE_NO_CONNECT, codes.ERR_DEVICE_PROBE, codes.ERR_DEVICE_NOT_ACTIVE,
            codes.ERR_DEVICE_PORT_ALLOCATE, codes.ERR_DEVICE_REBOOT, codes.ERR_DEVICE_QUERY_DEVICE}
_MEMORY = {codes.ERR_MEMORY_NOT_DEVICE_MEMORY}
_GENERIC_NO_MEMORY, _GENERIC_TIMEOUT, _GENERIC_BUSY = 0x07, 0x05, 0x06
_HINTS = {
    codes.ERR_DEVICE_PORT_ALLOCATE: "another process holds the card (Set AXCL device failed): stop it "
                                    "(a second Jupyter kernel?) or reboot the host if none is left",
    codes.ERR_DEVICE_OPEN: "/dev/axcl_host cannot be opened: `sudo modprobe axcl_host` (after a kernel upgrade "
                           "`sudo dkms autoinstall`), check the card's power and reseat it",
    codes.ERR_DEVICE_INVALID_ID: "pass a device id from axcl.rt.get_device_list(), not an index",
    codes.ERR_DEVICE_NO_ACTIVE_DEVICE: "call set_device / set_current_context on this thread first",
    codes.ERR_CONTEXT_NO_BIND_CONTEXT: "call set_current_context on this thread first",
    codes.ERR_ENGINE_EXECUTE_FAIL: "the NPU failed to run the model; retry once, then reset the card and reload",
    codes.ERR_ENGINE_ILLEGAL_PARAM: "a handle, index or size is invalid: this is a bug in the caller",
    codes.ERR_ENGINE_INVALID_INDEX: "a tensor index or shape group is out of range: the model is not the "
                                    "expected AXERA layer model",
    codes.WRAPPER_GUARD: "pyaxcl refused the call (a NULL/0 handle or empty path) or swallowed an exception "
                         "(its bare `except:` also swallows a Ctrl+C that lands inside the call); see the pyaxcl "
                         "log line just before this",
}


def error_class(ret: int) -> type[DeviceError]:
    """The DeviceError subclass for a runtime code."""
    code = codes.unsigned(ret)
    if code in _OFFLINE:
        return DeviceOfflineError
    errid = code & 0xFF
    if codes.is_native(ret):  # a device-side AX SDK code: only its "no memory" id is known to mean anything here
        return DeviceMemoryError if errid == codes.NATIVE_NOMEM_ID else DeviceError
    if code in _MEMORY or errid == _GENERIC_NO_MEMORY:
        return DeviceMemoryError
    if errid == _GENERIC_TIMEOUT or code == codes.ERR_STREAM_SYNC_TIMEOUT:
        return DeviceTimeoutError
    if errid == _GENERIC_BUSY:
        return DeviceBusyError
    return DeviceError


def device_error(ret: int, function: str, detail: str = "") -> DeviceError:
    """Build the typed exception for a failed call (do not raise it here: callers add context)."""
    key = ret if ret == codes.WRAPPER_GUARD else codes.unsigned(ret)
    return error_class(ret)(ret, function, detail, _HINTS.get(key))


def memory_error(ret: int, function: str, detail: str = "") -> DeviceError:
    """The error for a failed allocation: a memory error unless the code says the card is gone or pyaxcl refused.

    axclrtMalloc has no declared "out of memory" code; what comes back when CMM is exhausted is a device-side
    failure (MEMORY_EXECUTE_FAIL) or the card's own CMM code, so the call, not the code, decides.
    """
    error = device_error(ret, function, detail)
    if type(error) is DeviceError and ret != codes.WRAPPER_GUARD:
        return DeviceMemoryError(ret, function, detail)
    return error


# What a model load returns for the model itself rather than for the card: a bad handle, parameter or
# index, an unsupported file. Resetting or rebooting the card does not change the file.
_MODEL_CODES = frozenset({codes.ERR_ENGINE_ILLEGAL_PARAM, codes.ERR_ENGINE_AXCL_UNSUPPORTED,
                          codes.ERR_ENGINE_INVALID_INDEX, codes.ERR_ENGINE_NULL_POINTER})


def model_refused(exc: DeviceError) -> bool:
    """Whether a failed model load is the model's trouble (the caller's to fix) rather than the device's.

    A memory error is the model's: it does not fit in the CMM that is free (the backend's budget check says
    so with the numbers). pyaxcl's guard (-1) refuses a NULL handle or an empty path, or reports a model
    whose inputs and outputs are not what the layer model needs. Everything else is the device's, and the
    engine's recovery ladder handles it as it handles a failed execute (engine/ops/recovery.py)."""
    if isinstance(exc, DeviceMemoryError) or exc.code == codes.WRAPPER_GUARD:
        return True
    return codes.unsigned(exc.code) in _MODEL_CODES


HUNG_EXECUTE_S = 0.5  # a layer executes in 1-200 ms: an execute that fails after this long was a hang


def execute_error(ret: int, seconds: float, detail: str = "") -> DeviceError:
    """The error for a failed engine_execute: a timeout when it failed only after blocking this long.

    No header declares a timeout code, and what the runtime returns when the NPU hangs is undocumented (a
    generic EXECUTE_FAIL is likely): the time the call took is the context that names it.
    """
    error = device_error(ret, "axcl.rt.engine_execute", detail)
    if type(error) in (DeviceError, DeviceBusyError) and seconds >= HUNG_EXECUTE_S:
        return DeviceTimeoutError(ret, "axcl.rt.engine_execute",
                                  f"{detail}; it failed after blocking {seconds:.1f} s: the NPU hung")
    return error


def check(ret: int, function: str, detail: str = "") -> None:
    """Raise the typed error unless `ret` is AXCL_SUCC."""
    if ret != 0:
        raise device_error(ret, function, detail)
