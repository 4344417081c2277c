"""Every non-zero `ret` becomes a typed DeviceError the engine's recovery ladder can dispatch on."""

from __future__ import annotations

import pytest

from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.errors import (
    DeviceBusyError,
    DeviceError,
    DeviceMemoryError,
    DeviceOfflineError,
    DeviceTimeoutError,
    check,
    device_error,
    error_class,
)

S = codes.signed


@pytest.mark.parametrize(("code", "cls"), [
    (codes.ERR_DEVICE_NO_CONNECT, DeviceOfflineError),
    (codes.ERR_DEVICE_OPEN, DeviceOfflineError),
    (codes.ERR_DEVICE_PORT_ALLOCATE, DeviceOfflineError),
    (codes.ERR_MEMORY_NO_MEMORY, DeviceMemoryError),
    (codes.ERR_ENGINE_NO_MEMORY, DeviceMemoryError),
    (codes.ERR_MEMORY_NOT_DEVICE_MEMORY, DeviceMemoryError),
    (codes.ERR_ENGINE_TIMEOUT, DeviceTimeoutError),
    (codes.ERR_STREAM_SYNC_TIMEOUT, DeviceTimeoutError),
    (codes.ERR_ENGINE_BUSY, DeviceBusyError),
    (codes.ERR_ENGINE_EXECUTE_FAIL, DeviceError),
    (0x800D0001, DeviceError),  # a native AX SDK code passed through from the device
])
def test_codes_map_to_classes(code: int, cls: type[DeviceError]) -> None:
    assert error_class(S(code)) is cls
    assert issubclass(cls, DeviceError) and issubclass(cls, RuntimeError)


def test_message_names_call_code_and_remedy() -> None:
    err = device_error(S(codes.ERR_DEVICE_PORT_ALLOCATE), "axcl.rt.set_device", "device id 1")
    assert isinstance(err, DeviceOfflineError)
    assert (err.code, err.function, err.hex_code) == (S(0x80300186), "axcl.rt.set_device", "0x80300186")
    text = str(err)
    assert "axcl.rt.set_device failed with 0x80300186 AXCL_ERR_DEVICE_PORT_ALLOCATE (device id 1)" in text
    assert "another process holds the card" in text and err.hint in text


def test_wrapper_guard_is_explained() -> None:
    err = device_error(-1, "axcl.rt.engine_execute")
    assert err.hex_code == "-1 (pyaxcl guard)" and "NULL/0 handle" in str(err)


def test_check() -> None:
    check(0, "anything")
    with pytest.raises(DeviceTimeoutError, match="0x80300705"):
        check(S(codes.ERR_ENGINE_TIMEOUT), "axcl.rt.engine_execute")
