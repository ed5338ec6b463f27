"""Loader mixins of the DAWN pipeline."""

from .lora import DAWNLoraLoaderMixin


__all__ = ["DAWNLoraLoaderMixin"]
