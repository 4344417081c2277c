"""A simulated AX650N card with pyaxcl's API surface, a timing model, counters and fault injection.

`SimCard` stands in for `import axcl`; `make_axengine(card)` stands in for `import axengine`.
Neither needs hardware; a CPU twin (.onnx) runs through onnxruntime, a null-compute model runs nothing.
"""

from __future__ import annotations

from .card import SimCard, card_from_env
from .faults import Counters, Faults
from .memory import DEVICE_BASE
from .models import ModelDesc, TensorDesc, null_layer, null_post
from .timing import DEFAULT_PRESET, PRESETS, TIMING_MODELS, Geometry, Preset, TimingModel, get_preset

__all__ = [
    "DEFAULT_PRESET", "DEVICE_BASE", "PRESETS", "TIMING_MODELS", "Counters", "Faults", "Geometry",
    "ModelDesc", "Preset",
    "SimCard", "TensorDesc", "TimingModel", "card_from_env", "get_preset", "make_axengine", "null_layer", "null_post",
]


def make_axengine(card: SimCard | None = None, **kwargs: object) -> object:
    """A pyaxengine stand-in module bound to `card` (see axengine_fake)."""
    from .axengine_fake import make_axengine as _make

    return _make(card, **kwargs)  # type: ignore[arg-type]
