"""Let open_clip import without torchvision: stand-ins for the few torchvision names it imports.

open_clip imports torchvision at module level for its training/preprocessing
transforms (open_clip/transform.py) and for ``FrozenBatchNorm2d``
(open_clip/utils.py). The pinned CPU torch 2.13.0 has no importable
torchvision wheel on PyPI (the registry's wheel links CUDA torch libraries
and fails at import). ``train.export`` never uses those transforms: images are
preprocessed by the runtime's own :func:`zeroshot.images.preprocess`, as
configured by the manifest (the end-to-end check runs the real transforms in
the reference environment, train/export/reference.py). So when a real torchvision cannot be imported,
:func:`install` registers modules whose names exist (so imports succeed and
class statements that subclass them work) but whose objects raise
``TorchvisionUnavailable`` when called. A real, importable torchvision always
wins.
"""

from __future__ import annotations

import enum
import importlib.machinery
import logging
import sys
import types
from typing import Any, Dict

logger = logging.getLogger(__name__)

# module name -> names open_clip 3.x imports from it
_NAMES: Dict[str, tuple] = {
    "torchvision.transforms": ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop",
                               "ColorJitter", "Grayscale"),
    "torchvision.transforms.functional": ("resize", "get_dimensions", "pad", "crop", "to_tensor"),
    "torchvision.ops.misc": ("FrozenBatchNorm2d",),
}


class TorchvisionUnavailable(RuntimeError):
    """A torchvision stand-in was used: the export path must not need torchvision."""


class InterpolationMode(enum.Enum):
    """torchvision.transforms.InterpolationMode's members (open_clip uses them as default arguments)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _stand_in(qualname: str) -> type:
    """A class named ``qualname`` that raises TorchvisionUnavailable when instantiated or called."""

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise TorchvisionUnavailable(f"{qualname} is a stand-in: torchvision is not importable beside torch "
                                     "2.13.0 CPU (see train/export/torchvision_shim.py); train.export "
                                     "preprocesses images with zeroshot.images instead")

    return type(qualname.rsplit(".", 1)[-1], (), {"__init__": fail, "__call__": fail, "__module__": "torchvision"})


def real_torchvision_available() -> bool:
    """True if ``import torchvision`` works (partial modules of a failed import are removed)."""
    try:
        import torchvision  # noqa: F401
        return not getattr(sys.modules.get("torchvision"), "IS_STAND_IN", False)
    except Exception:  # the registry's wheel raises RuntimeError from its op registrations
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False


def install() -> bool:
    """Register the stand-in modules unless a real torchvision imports; True if the stand-ins are in use."""
    if real_torchvision_available():
        return False
    import transformers.utils.import_utils  # noqa: F401  (records "no torchvision" before the stand-ins exist)

    if getattr(sys.modules.get("torchvision"), "IS_STAND_IN", False):
        return True
    modules = {name: types.ModuleType(name) for name in
               ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops",
                "torchvision.ops.misc")}
    modules["torchvision"].IS_STAND_IN = True
    modules["torchvision"].__version__ = "0.0.0+stand-in"
    modules["torchvision.transforms"].InterpolationMode = InterpolationMode
    for mod_name, names in _NAMES.items():
        for name in names:
            setattr(modules[mod_name], name, _stand_in(f"{mod_name}.{name}"))
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
        sys.modules[name] = module
    logger.info("torchvision is not importable here: open_clip runs with stand-ins for its image transforms")
    return True
