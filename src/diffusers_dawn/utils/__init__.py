"""Small helpers shared by the package's modules."""

from .io import OutputPathError, atomic_file, atomic_folder, atomic_write_text, check_output_file, replace_folder


__all__ = [
    "OutputPathError",
    "atomic_file",
    "atomic_folder",
    "atomic_write_text",
    "check_output_file",
    "replace_folder",
]
