"""`axcl.rt` devices, contexts and streams, and the `axcl.sys` subset of the simulated card.

Contexts are per thread, as on the runtime: `set_device` or `create_context` binds one to the calling
thread, and device/memory/engine calls from a thread without one fail with NO_ACTIVE_DEVICE. This is
what forces a backend to call `set_current_context` in its worker threads, exactly as on hardware.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import axcl_codes as codes
from ..axcl_props import AxclrtDeviceProperties
from .api import GUARD, api
from .memory import Fail

if TYPE_CHECKING:
    from .card import SimCard


class DeviceApi:
    card: SimCard

    @api((0, 0, 0, GUARD))
    def get_version(self) -> tuple[int, int, int, int]:
        return (3, 10, 2, 0)

    @api(None, value=True)
    def get_soc_name(self) -> str | None:
        return "AX650N"

    @api(GUARD, rpc=True)
    def set_device(self, device_id: int) -> int:
        card = self.card
        card.require_init()
        if device_id not in card.device_ids:
            raise Fail(codes.ERR_DEVICE_INVALID_ID, f"device id {device_id} not in {card.device_ids}")
        if not card.take_ownership(device_id):
            raise Fail(codes.ERR_DEVICE_PORT_ALLOCATE, f"device {device_id} is owned by another process")
        ctx = card.default_contexts.get(device_id)
        if ctx is None:
            ctx = card.new_handle("context")
            card.contexts[ctx] = device_id
            card.default_contexts[device_id] = ctx
        card.local.context = ctx
        return 0

    @api(GUARD, rpc=True)
    def reset_device(self, device_id: int) -> int:
        card = self.card
        card.require_init()
        if device_id not in card.device_ids:
            raise Fail(codes.ERR_DEVICE_INVALID_ID)
        if getattr(card.local, "context", None) in card.contexts:
            card.local.context = None
        return 0

    @api((0, GUARD), context=True)
    def get_device(self) -> tuple[int, int]:
        ctx = self.card.current_context()
        return (self.card.contexts[ctx], 0)

    @api((0, GUARD))
    def get_device_count(self) -> tuple[int, int]:
        self.card.require_init()
        return (len(self.card.device_ids), 0)

    @api(([], GUARD))
    def get_device_list(self) -> tuple[list[int], int]:
        self.card.require_init()
        return (list(self.card.device_ids), 0)

    @api(GUARD, context=True, rpc=True)
    def synchronize_device(self) -> int:
        self.card.current_context()
        return 0

    @api(({}, GUARD))
    def get_device_properties(self, device_id: int) -> tuple[dict[str, Any], int]:
        """pyAXCL 3.10's wrapper of axclrtGetDeviceProperties: the struct as a dict with snake_case keys.

        (3.10 also drops get_device_utilization_rate, so the simulated card has none.)
        """
        props = AxclrtDeviceProperties()
        ret = self.card.lib_rt.axclrtGetDeviceProperties(device_id, props)
        if ret != 0:
            raise Fail(codes.unsigned(ret), "axclrtGetDeviceProperties")
        fields = {field[0]: getattr(props, field[0]) for field in AxclrtDeviceProperties._fields_}
        return ({_snake(k): (list(v) if k == "reserved" else v) for k, v in fields.items() if k != "swVersion"}
                | {"sw_version": list(props.swVersion.ljust(64, b"\0"))}, 0)

    @api((None, GUARD), rpc=True)
    def create_context(self, device_id: int) -> tuple[int | None, int]:
        card = self.card
        card.require_init()
        if device_id not in card.device_ids:
            raise Fail(codes.ERR_DEVICE_INVALID_ID)
        if not card.take_ownership(device_id):
            raise Fail(codes.ERR_DEVICE_PORT_ALLOCATE, f"device {device_id} is owned by another process")
        ctx = card.new_handle("context")
        card.contexts[ctx] = device_id
        card.local.context = ctx
        return (ctx, 0)

    @api(GUARD)
    def destroy_context(self, context: int) -> int:
        if not context:
            return GUARD
        if self.card.contexts.pop(context, None) is None:
            raise Fail(codes.ERR_CONTEXT_NULL_POINTER)
        if getattr(self.card.local, "context", None) == context:
            self.card.local.context = None
        return 0

    @api(GUARD)
    def set_current_context(self, context: int) -> int:
        if not context:
            return GUARD
        if context not in self.card.contexts:
            raise Fail(codes.ERR_CONTEXT_NULL_POINTER, "unknown context")
        self.card.local.context = context
        return 0

    @api((None, GUARD))
    def get_current_context(self) -> tuple[int | None, int]:
        return (self.card.current_context(), 0)

    @api((None, GUARD))
    def get_default_context(self, device_id: int) -> tuple[int | None, int]:
        ctx = self.card.default_contexts.get(device_id)
        if ctx is None:
            raise Fail(codes.ERR_CONTEXT_NULL_POINTER)
        return (ctx, 0)

    @api((None, GUARD), context=True, rpc=True)
    def create_stream(self) -> tuple[int | None, int]:
        self.card.current_context()
        stream = self.card.new_handle("stream")
        self.card.streams.add(stream)
        return (stream, 0)

    def _stream_op(self, stream: int) -> int:
        if not stream:
            return GUARD
        if stream not in self.card.streams:
            raise Fail(codes.ERR_STREAM_NULL_POINTER)
        return 0

    @api(GUARD, context=True, rpc=True)
    def destroy_stream(self, stream: int) -> int:
        ret = self._stream_op(stream)
        self.card.streams.discard(stream)
        return ret

    @api(GUARD, context=True, rpc=True)
    def destroy_stream_force(self, stream: int) -> int:
        ret = self._stream_op(stream)
        self.card.streams.discard(stream)
        return ret

    @api(GUARD, context=True, rpc=True)
    def synchronize_stream(self, stream: int) -> int:
        return self._stream_op(stream)

    @api(GUARD, context=True, rpc=True)
    def synchronize_stream_with_timeout(self, stream: int, timeout: int) -> int:
        return self._stream_op(stream)


def _snake(name: str) -> str:
    special = {"pciBusID": "pci_bus_id", "pciDeviceID": "pci_device_id"}
    return special.get(name) or "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


class SysApi:
    """`axcl.sys`: only what a health monitor reads (CMM status and partitions).

    Queries need `axcl.sys.init()` first (every vendor sample calls AXCL_SYS_Init before SYS APIs; whether the
    real library insists is undocumented, so the simulated one does); otherwise they fail with the native
    AX_ERR_CMM_NOTREADY, passed through as the runtime passes device codes.
    """

    count_prefix = "sys."  # counters.calls["sys.init"], apart from axcl.init

    def __init__(self, card: SimCard) -> None:
        self.card = card
        self.inited = 0

    @api(GUARD)
    def init(self) -> int:
        self.card.require_init()
        self.inited += 1
        return 0

    @api(GUARD)
    def deinit(self) -> int:
        self.inited = max(0, self.inited - 1)
        return 0

    def _require_sys(self) -> None:
        self.card.require_init()
        if not self.inited:
            raise Fail(codes.AX_ERR_CMM_NOTREADY, "axcl.sys.init() was not called")

    @api(({}, GUARD), rpc=True)
    def mem_query_status(self) -> tuple[dict[str, Any], int]:
        card = self.card
        self._require_sys()
        total_kb = card.cmm_capacity() // 1024
        return ({"total_size": total_kb, "remain_size": max(0, card.cmm_capacity() - card.cmm_used()) // 1024,
                 "block_cnt": len(card.memory.blocks) + len(card.models),
                 "partition": [{"phy_addr": 0x1_4000_0000, "size_kbyte": total_kb, "name": "anonymous"}]}, 0)

    @api(([], GUARD), rpc=True)
    def mem_get_partition_info(self) -> tuple[list[dict[str, Any]], int]:
        self._require_sys()
        return ([{"phy_addr": 0x1_4000_0000, "size_kbyte": self.card.cmm_capacity() // 1024, "name": "anonymous"}], 0)
