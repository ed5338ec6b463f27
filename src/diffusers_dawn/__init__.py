"""DAWN talking-head generation for the Hugging Face diffusers ecosystem."""

__version__ = "0.1.0"

from .models import LFGAutoencoder, PBNetModel, UNet3DFlowModel
from .pipelines import DAWNPipeline, DAWNPipelineOutput
from .processing.video import export_to_video_with_audio
from .schedulers import DAWNDDIMScheduler


__all__ = [
    "DAWNDDIMScheduler",
    "DAWNPipeline",
    "DAWNPipelineOutput",
    "LFGAutoencoder",
    "PBNetModel",
    "UNet3DFlowModel",
    "export_to_video_with_audio",
]
