"""pyaxcl's wrapper conventions, applied to every simulated API function by one decorator.

docs/sdk-notes.md, "pyaxcl": results are `ret` alone or a tuple with `ret` last; runtime codes are negative
int32; -1 is pyaxcl's own code for a tripped guard or a swallowed exception; wrappers never raise; NULL
comes back as None. An implementation signals a runtime error by raising `Fail(code)`.

pyaxcl's wrappers end in a bare `except:`, so even a KeyboardInterrupt or SystemExit raised while a call is
inside the wrapper comes back as its default (-1): so it does here. The decorator also enforces what the
AXCL docs require of threads (a bound context for every device call, `context=True`) and charges one PCIe
round trip (`TimingModel.rpc_ms`) to every call that crosses the bus (`rpc=True`); host-only work such as
the IO buffer setters costs nothing.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from .. import axcl_codes as codes
from .memory import Fail

if TYPE_CHECKING:
    from .card import SimCard

log = logging.getLogger("ax_llm_provider.runtime.simcard")
F = TypeVar("F", bound=Callable[..., Any])
GUARD = codes.WRAPPER_GUARD


def _with_code(default: Any, kind: str, code: int) -> Any:
    if kind == "ret":
        return codes.signed(code)
    if kind == "tuple":
        return (*default[:-1], codes.signed(code))
    return default


def api(default: Any, *, value: bool = False, host_only: bool = False, context: bool = False,
        rpc: bool = False) -> Callable[[F], F]:
    """Wrap an API method: count it, honour the offline fault, map Fail/exceptions to pyaxcl's returns.

    default:   what pyaxcl returns when its guard trips or it swallows an exception.
    value:     the function returns a bare value (no ret), e.g. engine_get_num_inputs.
    host_only: pure host work (malloc_host, free_host) that keeps working when the card is offline.
    context:   the calling thread must have a bound context (else DEVICE_NO_ACTIVE_DEVICE).
    rpc:       the call is a request to the card: charge one PCIe round trip (guarded calls too: a small overcharge).
    """
    kind = "value" if value else ("tuple" if isinstance(default, tuple) else "ret")

    def decorate(fn: F) -> F:
        name = fn.__name__
        signature = inspect.signature(fn)
        most = fn.__code__.co_argcount - 1
        least = most - len(fn.__defaults__ or ())

        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            # a wrong call raises TypeError before pyaxcl's body runs, so it is not swallowed either
            if kwargs:
                signature.bind(self, *args, **kwargs)
            elif not least <= len(args) <= most:
                raise TypeError(f"{name}() takes {most} positional arguments but {len(args)} were given")
            card: SimCard = self.card
            card.counters.calls[getattr(self, "count_prefix", "") + name] += 1
            if card.faults.offline and not host_only:
                return _with_code(default, kind, card.faults.offline_code)
            clock = card.clock
            started, slept = perf_counter(), clock.slept_ms
            try:
                card.faults.maybe_interrupt(name)
                if context:
                    card.current_context()
                if rpc:
                    clock.charge("rpc", card.timing.rpc_ms)
                return fn(self, *args, **kwargs)
            except Fail as fail:
                log.debug("simulated %s -> 0x%08X: %s", name, fail.code, fail)
                return _with_code(default, kind, fail.code)
            except BaseException as exc:  # noqa: BLE001  # pyaxcl's bare `except:` eats even KeyboardInterrupt
                log.error("simulated pyaxcl wrapper %s swallowed %s: %s", name, type(exc).__name__, exc)
                log.debug("swallowed exception", exc_info=True)
                return default
            finally:  # host time spent inside the simulator itself (stands in for pyaxcl's ctypes cost)
                clock.sim_host_ms += (perf_counter() - started) * 1e3 - (clock.slept_ms - slept)

        return wrapper  # type: ignore[return-value]

    return decorate
