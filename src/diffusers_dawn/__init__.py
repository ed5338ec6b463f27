"""DAWN talking-head generation for the Hugging Face diffusers ecosystem."""

__version__ = "0.1.0"
