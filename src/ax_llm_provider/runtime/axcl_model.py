"""One compiled model loaded through pyaxcl: its engine context, I/O description and one IO per shape group.

Reads everything the runtime reports (names, dtypes, dims and byte sizes per group) and never assumes
tensor order: the backend looks tensors up by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from math import prod
from typing import Any

from . import axcl_codes as codes
from .axcl_device import AxclRuntime, value
from .errors import DeviceError, check, device_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: int  # axclrtEngineDataType
    dims: tuple[tuple[int, ...], ...]  # per shape group
    sizes: tuple[int, ...]  # bytes per shape group

    def elements(self, group: int) -> int:
        return prod(self.dims[group])


class EngineModel:
    """A loaded model. `close()` destroys its IOs and io-info and unloads it (never raises)."""

    def __init__(self, runtime: AxclRuntime, path: str) -> None:
        self.path = str(path)
        self._rt = rt = runtime.rt
        self.model_id = 0
        self.ios: list[Any] = []
        self.io_info = None
        self.model_id = value(rt.engine_load_from_file(self.path), "axcl.rt.engine_load_from_file", self.path)
        try:
            self.context_id = value(rt.engine_create_context(self.model_id), "axcl.rt.engine_create_context", self.path)
            self.io_info = value(rt.engine_get_io_info(self.model_id), "axcl.rt.engine_get_io_info", self.path)
            self.groups = value(rt.engine_get_shape_groups_count(self.io_info), "axcl.rt.engine_get_shape_groups_count")
            self.inputs = self._tensors(output=False)
            self.outputs = self._tensors(output=True)
            for _ in range(self.groups):
                self.ios.append(value(rt.engine_create_io(self.io_info), "axcl.rt.engine_create_io", self.path))
        except BaseException:
            self.close()
            raise

    def _tensors(self, output: bool) -> dict[str, TensorInfo]:
        rt, info, side = self._rt, self.io_info, "output" if output else "input"
        count = getattr(rt, f"engine_get_num_{side}s")(info)
        if count <= 0:
            raise DeviceError(codes.WRAPPER_GUARD, f"axcl.rt.engine_get_num_{side}s", f"{self.path} reports {count}")
        tensors: dict[str, TensorInfo] = {}
        for i in range(count):
            name = getattr(rt, f"engine_get_{side}_name_by_index")(info, i)
            if name is None:
                raise DeviceError(codes.WRAPPER_GUARD, f"axcl.rt.engine_get_{side}_name_by_index", f"{self.path} #{i}")
            dtype = value(getattr(rt, f"engine_get_{side}_data_type")(info, i), f"axcl.rt.engine_get_{side}_data_type")
            dims, sizes = [], []
            for g in range(self.groups):
                shape, ret = getattr(rt, f"engine_get_{side}_dims")(info, g, i)
                check(ret, f"axcl.rt.engine_get_{side}_dims", f"{self.path} {name} group {g}")
                size = getattr(rt, f"engine_get_{side}_size_by_index")(info, g, i)
                if size <= 0 or size == codes.SIZE_INVALID_INDEX:
                    raise device_error(codes.signed(codes.ERR_ENGINE_INVALID_INDEX),
                                       f"axcl.rt.engine_get_{side}_size_by_index", f"{self.path} {name} group {g}")
                dims.append(tuple(int(d) for d in shape))
                sizes.append(int(size))
            tensors[name] = TensorInfo(i, name, int(dtype), tuple(dims), tuple(sizes))
        return tensors

    def require(self, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        missing = [n for n in inputs if n not in self.inputs] + [n for n in outputs if n not in self.outputs]
        if missing:
            raise ValueError(
                f"{self.path} lacks tensor(s) {missing}; it has inputs {list(self.inputs)} and outputs "
                f"{list(self.outputs)}: not an AXERA per-layer LLM model (docs/sdk-notes.md, 'The tensor contract')"
            )

    def bind(self, group: int, name: str, ptr: int, size: int, output: bool = False) -> None:
        tensors = self.outputs if output else self.inputs
        setter = self._rt.engine_set_output_buffer_by_index if output else self._rt.engine_set_input_buffer_by_index
        check(setter(self.ios[group], tensors[name].index, ptr, size),
              f"axcl.rt.engine_set_{'output' if output else 'input'}_buffer_by_index",
              f"{self.path} {name} group {group}")

    def close(self) -> None:
        rt = self._rt
        steps = [("engine_destroy_io", rt.engine_destroy_io, io) for io in self.ios]
        if self.io_info:
            steps.append(("engine_destroy_io_info", rt.engine_destroy_io_info, self.io_info))
        if self.model_id:
            steps.append(("engine_unload", rt.engine_unload, self.model_id))
        for name, fn, arg in steps:  # pyaxcl never raises: a failure is logged and teardown goes on
            ret = fn(arg)
            if ret != 0:
                log.warning("closing %s: %s", self.path, device_error(ret, f"axcl.rt.{name}"))
        self.ios, self.io_info, self.model_id = [], None, 0
