"""Pipelines of diffusers-dawn."""

from .pipeline_dawn import DAWNPipeline
from .pipeline_output import DAWNPipelineOutput


__all__ = ["DAWNPipeline", "DAWNPipelineOutput"]
