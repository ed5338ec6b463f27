"""Small helpers shared by the package's modules."""

from .io import atomic_file, atomic_folder, atomic_write_text, replace_folder
