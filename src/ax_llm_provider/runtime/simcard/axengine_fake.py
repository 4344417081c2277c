"""A pyaxengine stand-in (module `axengine`, AXCLRT provider) built on a simulated card.

Reproduces pyaxengine 0.1.3 (docs/sdk-notes.md, "pyaxengine"): provider selection,
`provider_options=[{"device_id": i}]` read as an
index into get_device_list(), NodeArg with numpy dtypes (bf16 = ml_dtypes.bfloat16), the AXCLRT session's
exact construction order through the card's pyaxcl API, and `run()`'s checks in their order with their
exception types: missing input / unknown output name -> ValueError, bad shape group -> ValueError (or
IndexError), shape or dtype mismatch -> AssertionError (no casting), an output list omitting a model output ->
ValueError (HEAD), device failure -> RuntimeError. Every input fed is copied H2D and every output D2H, every
call: that is the behaviour (and the cost) the axengine backend inherits.

Also its habits: sessions are held in a module-level list (strong references, so dropping one frees nothing;
only `_unload()` or interpreter exit does), `[INFO]` lines are print()ed to stdout, and a non-zero
axclrtEngineInit makes session construction raise AttributeError (the real code formats `vnpu.value` on a cffi
pointer in both of its failure branches).
"""

from __future__ import annotations

import atexit
import logging
import weakref
from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import axcl_codes as codes
from .card import SimCard

log = logging.getLogger("ax_llm_provider.runtime.simcard")
AXCLRT = "AXCLRTExecutionProvider"
AXENGINE = "AxEngineExecutionProvider"


def _dtype_map() -> dict[int, np.dtype]:
    try:
        import ml_dtypes
    except ImportError as exc:  # pyaxengine itself depends on ml-dtypes
        raise ImportError("the pyaxengine fake needs ml_dtypes for bf16: pip install ml-dtypes") from exc
    return {codes.AXCL_DATA_TYPE_UINT8: np.dtype(np.uint8), codes.AXCL_DATA_TYPE_INT8: np.dtype(np.int8),
            codes.AXCL_DATA_TYPE_UINT16: np.dtype(np.uint16), codes.AXCL_DATA_TYPE_INT16: np.dtype(np.int16),
            codes.AXCL_DATA_TYPE_UINT32: np.dtype(np.uint32), codes.AXCL_DATA_TYPE_INT32: np.dtype(np.int32),
            codes.AXCL_DATA_TYPE_FP32: np.dtype(np.float32), codes.AXCL_DATA_TYPE_BF16: np.dtype(ml_dtypes.bfloat16)}


class NodeArg:
    def __init__(self, name: str, dtype: np.dtype, shape: list[int]) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape


class SessionOptions:
    pass


class _Module:
    """Module-level state of the fake: lazy axclInit on the first AXCLRT session, atexit teardown."""

    def __init__(self, card: SimCard, providers: list[str]) -> None:
        if not providers:
            raise ImportError("No providers found. Please make sure you have installed one of the following: "
                              f"{[AXENGINE, AXCLRT]}")
        self.card, self.available = card, providers
        self.sessions: list[Any] = []  # strong references, as pyaxengine's _all_model_instances
        self.initialised = False
        self.engine_initialised = False
        self.dtypes = _dtype_map()
        print(f"[INFO] Available providers:  {providers}")

    def ensure_init(self) -> None:
        if self.initialised:
            return
        ret = self.card.init("")  # pyaxengine passes an empty config
        if ret != 0:
            raise RuntimeError(f"Failed to initialize axcl runtime. {ret}.")
        self.initialised = True
        atexit.register(_shutdown, weakref.ref(self))

    def shutdown(self) -> None:
        for session in list(self.sessions):
            session._unload()
        if self.engine_initialised:
            self.card.rt.engine_finalize()
        if self.initialised:
            self.card.finalize()
        self.initialised = self.engine_initialised = False


def _shutdown(ref: weakref.ref[_Module]) -> None:
    module = ref()
    if module is not None:
        module.shutdown()


class _AxclrtSession:
    def __init__(self, module: _Module, path_or_bytes: str | bytes, device_index: int) -> None:
        module.ensure_init()
        self._module = module
        rt: Any = module.card.rt
        self._io = None
        self._buffers: list[int] = []
        self._model_id = 0
        devices, ret = rt.get_device_list()
        if ret != 0 or not devices:
            raise RuntimeError(f"Get AXCL device failed 0x{ret & 0xFFFFFFFF:08x}, find total {len(devices)} device.")
        if device_index >= len(devices):
            raise RuntimeError(f"Device index {device_index} is out of range, total {len(devices)}.")
        if rt.set_device(devices[device_index]) != 0:
            raise RuntimeError(f"Set AXCL device failed {devices[device_index]}.")
        if rt.engine_init(codes.AXCL_VNPU_DISABLE) == 0:
            module.engine_initialised = True
        else:  # both branches of the real code format `vnpu.value` on a cffi pointer first
            rt.engine_get_vnpu_kind()
            raise AttributeError("cdata 'axclrtEngineVNpuKind *' has no attribute 'value'")
        print(f"[INFO] SOC Name: {rt.get_soc_name()}")
        self._context, ret = rt.get_current_context()
        if ret != 0:
            raise RuntimeError("Get current context failed.")
        kind, ret = rt.engine_get_vnpu_kind()
        if ret != 0:
            raise RuntimeError("Failed to get VNPU attribute.")
        print(f"[INFO] VNPU type: VNPUType.{'DISABLED' if kind == codes.AXCL_VNPU_DISABLE else kind}")
        self._load(rt, path_or_bytes)
        self._model_ctx, ret = rt.engine_create_context(self._model_id)
        if ret != 0:
            raise RuntimeError(f"axclrtEngineCreateContext failed 0x{ret & 0xFFFFFFFF:08x}.")
        print(f"[INFO] Compiler version: {rt.engine_get_model_compiler_version(self._model_id)}")
        info, ret = rt.engine_get_io_info(self._model_id)
        count, ret2 = rt.engine_get_shape_groups_count(info) if ret == 0 else (0, ret)
        if ret != 0 or ret2 != 0:
            rt.engine_unload(self._model_id)
            raise RuntimeError("axclrtEngineGetIOInfo / GetShapeGroupsCount failed "
                               f"0x{(ret or ret2) & 0xFFFFFFFF:08x}.")
        self._info, self._shape_count = info, count
        self._inputs = [self._node_args(rt, g, False) for g in range(count)]
        self._outputs = [self._node_args(rt, g, True) for g in range(count)]
        self._allocate(rt)
        module.sessions.append(self)

    def _load(self, rt: Any, source: str | bytes) -> None:
        if isinstance(source, str):
            self._model_id, ret = rt.engine_load_from_file(source)
        elif isinstance(source, bytes):
            dev, ret = rt.malloc(len(source), codes.AXCL_MEM_MALLOC_NORMAL_ONLY)
            if ret == 0:
                buf = np.frombuffer(source, np.uint8)
                rt.memcpy(dev, buf.ctypes.data, len(source), codes.AXCL_MEMCPY_HOST_TO_DEVICE)
                self._model_id, ret = rt.engine_load_from_mem(dev, len(source))
                rt.free(dev)
        else:
            raise TypeError(f"Invalid model type: {type(source)}")
        if ret != 0:
            raise RuntimeError(f"axclrtEngineLoadFromFile failed 0x{ret & 0xFFFFFFFF:08x}.")

    def _node_args(self, rt: Any, group: int, outputs: bool) -> list[NodeArg]:
        side = "output" if outputs else "input"
        args = []
        for i in range(getattr(rt, f"engine_get_num_{side}s")(self._info)):
            name = getattr(rt, f"engine_get_{side}_name_by_index")(self._info, i)
            dtype, _ = getattr(rt, f"engine_get_{side}_data_type")(self._info, i)
            if dtype not in self._module.dtypes:
                raise ValueError(f"Unsupported data type '{dtype}'.")
            dims, _ = getattr(rt, f"engine_get_{side}_dims")(self._info, group, i)
            args.append(NodeArg(name, self._module.dtypes[dtype], list(dims)))
        return args

    def _allocate(self, rt: Any) -> None:
        self._io, ret = rt.engine_create_io(self._info)
        if ret != 0:
            raise RuntimeError(f"axclrtEngineCreateIO failed 0x{ret & 0xFFFFFFFF:08x}.")
        for side, nodes in (("input", self._inputs[0]), ("output", self._outputs[0])):
            for i in range(len(nodes)):
                size = max(getattr(rt, f"engine_get_{side}_size_by_index")(self._info, g, i)
                           for g in range(self._shape_count))
                ptr, ret = rt.malloc(size, codes.AXCL_MEM_MALLOC_NORMAL_ONLY)
                if ret != 0:
                    raise RuntimeError(f"axclrtMalloc failed 0x{ret & 0xFFFFFFFF:08x} for {side} {i}.")
                self._buffers.append(ptr)
                ret = getattr(rt, f"engine_set_{side}_buffer_by_index")(self._io, i, ptr, size)
                if ret != 0:
                    raise RuntimeError(f"axclrtEngineSet{side.title()}BufferByIndex failed 0x{ret & 0xFFFFFFFF:08x}.")

    def _unload(self) -> None:
        rt: Any = self._module.card.rt
        if self._io is not None:
            for side, nodes in (("input", self._inputs[0]), ("output", self._outputs[0])):
                for i in range(len(nodes)):
                    ptr, _, _ = getattr(rt, f"engine_get_{side}_buffer_by_index")(self._io, i)
                    if ptr:
                        rt.free(ptr)
            rt.engine_destroy_io(self._io)
            self._io = None
        if self._model_id:
            rt.engine_unload(self._model_id)
            self._model_id = 0

    def __del__(self) -> None:
        # as the real one; it only runs once the module list let go (interpreter exit), so it rarely does
        try:
            self._unload()
            self._module.sessions.remove(self)
        except (AttributeError, TypeError, ValueError) as exc:  # teardown, or never listed
            log.debug("pyaxengine fake: __del__: %s", exc)

    def get_inputs(self, shape_group: int = 0) -> list[NodeArg]:
        return self._group_list(self._inputs, shape_group)

    def get_outputs(self, shape_group: int = 0) -> list[NodeArg]:
        return self._group_list(self._outputs, shape_group)

    def _group_list(self, lists: list[list[NodeArg]], shape_group: int) -> list[NodeArg]:
        if shape_group > self._shape_count:
            raise ValueError(f"Shape group '{shape_group}' is out of range, total {self._shape_count}.")
        return lists[shape_group]  # == count: IndexError, negative: from the end (as the real code)

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray], run_options: Any = None,
            shape_group: int = 0) -> list[np.ndarray]:
        rt: Any = self._module.card.rt
        names0 = [n.name for n in self._inputs[0]]
        missing = [n for n in names0 if n not in input_feed]
        if missing:
            raise ValueError(f"Required inputs ({missing}) are missing from input feed ({list(input_feed)}).")
        outputs0 = [n.name for n in self._outputs[0]]
        for name in output_names or []:
            if name not in outputs0:
                raise ValueError(f"Output name '{name}' is not in model outputs name list.")
        if rt.set_current_context(self._context) != 0:
            raise RuntimeError("Set context failed.")
        if output_names is None:
            output_names = [n.name for n in self.get_outputs(shape_group)]
        if shape_group > self._shape_count - 1 or shape_group < 0:
            raise ValueError(f"Invalid shape group: {shape_group}")
        nodes = self.get_inputs(shape_group)
        for key, arr in input_feed.items():
            for i, node in enumerate(nodes):
                if node.name != key:
                    continue
                assert list(node.shape) == list(arr.shape) and node.dtype == arr.dtype, (
                    f"model inputs({key}) expect shape {node.shape} and dtype {node.dtype}, howerver gets input "
                    f"with shape {arr.shape} and dtype {arr.dtype}")
                if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
                    arr = np.ascontiguousarray(arr)
                ptr, _, _ = rt.engine_get_input_buffer_by_index(self._io, i)
                if rt.memcpy(ptr, arr.ctypes.data, arr.nbytes, codes.AXCL_MEMCPY_HOST_TO_DEVICE) != 0:
                    raise RuntimeError(f"axclrtMemcpy failed for input {i}.")
        ret = rt.engine_execute(self._model_id, self._model_ctx, shape_group, self._io)
        out_nodes = self.get_outputs(shape_group)
        ranks = [output_names.index(n.name) for n in out_nodes]  # HEAD: ValueError if one is omitted
        if ret != 0:
            raise RuntimeError(f"axclrtEngineExecute failed 0x{ret:08x}")
        results = []
        for i in ranks:
            node = out_nodes[i]
            out = np.zeros(node.shape, dtype=node.dtype)
            ptr, _, _ = rt.engine_get_output_buffer_by_index(self._io, i)
            if rt.memcpy(out.ctypes.data, ptr, out.nbytes, codes.AXCL_MEMCPY_DEVICE_TO_HOST) != 0:
                raise RuntimeError(f"axclrtMemcpy failed for output {i}.")
            if node.name in output_names:
                results.append(out)
        return results


def make_axengine(card: SimCard | None = None, providers: list[str] | None = None) -> SimpleNamespace:
    """The fake `axengine` module. `providers` defaults to the card only; [] reproduces the ImportError."""
    module = _Module(card or SimCard(), [AXCLRT] if providers is None else providers)

    class InferenceSession:
        def __init__(self, path_or_bytes: str | bytes, sess_options: Any = None, providers: Any = None,
                     provider_options: Any = None, **kwargs: Any) -> None:
            self._sess_options = sess_options
            self._provider = _choose_provider(module.available, providers)
            if self._provider != AXCLRT:
                raise ValueError(f"Selected provider: '{self._provider}' is not simulated.")
            print(f"[INFO] Using provider: {self._provider}")
            device_index = provider_options[0].get("device_id", 0) if provider_options else 0
            self._sess = _AxclrtSession(module, path_or_bytes, device_index)

        def get_providers(self) -> str:
            return self._provider

        def get_session_options(self) -> Any:
            return self._sess_options

        def get_inputs(self, shape_group: int = 0) -> list[NodeArg]:
            return self._sess.get_inputs(shape_group)

        def get_outputs(self, shape_group: int = 0) -> list[NodeArg]:
            return self._sess.get_outputs(shape_group)

        def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray], run_options: Any = None,
                shape_group: int = 0) -> list[np.ndarray]:
            return self._sess.run(output_names, input_feed, run_options, shape_group)

        def __enter__(self) -> InferenceSession:
            return self

        def __exit__(self, *exc: object) -> None:
            pass  # as the real one: no close()

    return SimpleNamespace(
        InferenceSession=InferenceSession, SessionOptions=SessionOptions, NodeArg=NodeArg,
        get_all_providers=lambda: [AXENGINE, AXCLRT], get_available_providers=lambda: list(module.available),
        axengine_provider_name=AXENGINE, axclrt_provider_name=AXCLRT, card=module.card, _module=module,
    )


def _choose_provider(available: list[str], providers: Any) -> str:
    if providers is None:
        return available[0]
    if isinstance(providers, str):
        if providers not in available:
            raise ValueError(f"Selected provider: '{providers}' is not available.")
        return providers
    if isinstance(providers, list):
        for entry in providers:
            if isinstance(entry, tuple):
                assert len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], dict)
                entry = entry[0]  # the dict is stored but not used (docs/sdk-notes.md, "pyaxengine")
            if entry in available:
                return entry
            log.warning("[WARNING] Selected provider: '%s' is not available.", entry)
        raise ValueError(f"No available provider found in {providers}.")
    raise ValueError(f"No available provider found in {providers}.")
