"""DAWN talking-head generation for the Hugging Face diffusers ecosystem."""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0"

# The public names are imported on first use, so that `import diffusers_dawn.cli` (the console script) does not
# load torch and diffusers before it knows which command runs.
_PUBLIC_NAMES = {
    "DAWNDDIMScheduler": ".schedulers",
    "DAWNPipeline": ".pipelines",
    "DAWNPipelineOutput": ".pipelines",
    "LFGAutoencoder": ".models",
    "PBNetModel": ".models",
    "UNet3DFlowModel": ".models",
    "export_to_video_with_audio": ".processing.video",
}

__all__ = sorted(_PUBLIC_NAMES)

if TYPE_CHECKING:
    from .models import LFGAutoencoder, PBNetModel, UNet3DFlowModel
    from .pipelines import DAWNPipeline, DAWNPipelineOutput
    from .processing.video import export_to_video_with_audio
    from .schedulers import DAWNDDIMScheduler


def __getattr__(name: str):
    if name not in _PUBLIC_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC_NAMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
