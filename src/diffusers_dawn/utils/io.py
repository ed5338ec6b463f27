"""
Writing files and folders so that nothing is lost: every writer of the package first writes to a temporary name
beside the target and renames it into place once complete. An interrupted or failed write leaves no partial file and
does not touch the previous version, because a rename within one folder is atomic.
"""

import contextlib
import os
import shutil
import tempfile
import uuid
from typing import Iterator, Mapping, Optional, Sequence, Union

from .errors import DAWNInputError


PathLike = Union[str, os.PathLike]
PARTIAL_TAG = ".partial"


def _default_mode(executable: bool) -> int:
    # mkstemp / mkdtemp create private (0600 / 0700) entries; a finished file gets the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if executable else 0o666) & ~umask


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[str]:
    """
    Yields a temporary path in the folder of `path` (hidden, same suffix, so format-by-extension writers work) to
    write the file to; when the block finishes, the file is renamed to `path`, replacing any previous file. When the
    block raises (or is interrupted), the temporary file is removed and `path` is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    stem, suffix = os.path.splitext(name)
    handle, partial = tempfile.mkstemp(prefix=f".{stem}.", suffix=f"{PARTIAL_TAG}{suffix}", dir=folder)
    os.close(handle)
    try:
        yield partial
        os.chmod(partial, _default_mode(executable=False))
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` through [`atomic_file`]."""
    with atomic_file(path) as partial:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)


def replace_folder(source: PathLike, target: PathLike) -> None:
    """
    Moves the finished folder `source` to `target` (a sibling), replacing a previous `target`: the old folder is
    renamed aside first, restored if the move fails, and deleted only once the new one is in place.
    """
    source, target = os.fspath(source), os.fspath(target)
    if not os.path.lexists(target):
        os.replace(source, target)
        return
    folder, name = os.path.split(os.path.abspath(target))
    previous = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(target, previous)
    try:
        os.replace(source, target)
    except BaseException:
        os.replace(previous, target)
        raise
    _remove(previous)


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[str]:
    """
    Yields a new, empty temporary folder beside `path` to write into; when the block finishes, it replaces `path`
    (see [`replace_folder`]). When the block raises (or is interrupted), the temporary folder is removed and `path`
    is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{name}.", suffix=PARTIAL_TAG, dir=parent)
    try:
        yield partial
        os.chmod(partial, _default_mode(executable=True))
        replace_folder(partial, path)
    except BaseException:
        _remove(partial)
        raise


class OutputPathError(DAWNInputError):
    """An output path that must not or cannot be written; the message names it and says what to do."""


def check_output_file(
    path: PathLike,
    suffixes: Sequence[str] = (),
    inputs: Mapping[str, Optional[PathLike]] = None,
    overwrite: bool = False,
    option: str = "--output",
) -> str:
    """
    Checks, before any expensive work, that a file can be written at `path`: its suffix is one of `suffixes`, it is
    not a folder, its folder (or the nearest existing parent, when folders are to be created) is a folder that accepts
    new files, it is none of `inputs` (name → path; the file would be
    destroyed), and it does not exist yet unless `overwrite`. Messages name `path` and the command-line `option`.

    Returns:
        `str`: `path` as given (not resolved).

    Raises:
        OutputPathError: the first check that fails.
    """
    path = os.fspath(path)
    if suffixes and not path.lower().endswith(tuple(suffix.lower() for suffix in suffixes)):
        raise OutputPathError(f"{option} must be an {' or '.join(suffixes)} file, got {path!r}")
    if os.path.isdir(path):
        example = os.path.join(path, f"video{suffixes[0] if suffixes else ''}")
        raise OutputPathError(f"{option} {path} is a folder; give a file name, e.g. {example}")
    # Missing folders are created by the writers; the nearest existing one must be a folder that accepts files.
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise OutputPathError(f"{option} {path}: {folder} is a file, not a folder; choose another path")
    try:
        # Creating a file is the only reliable test (permissions, ACLs, read-only file systems, full quota).
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputPathError(
            f"{option} {path}: cannot create files in {folder} ({error.strerror or error}); choose a writable folder"
        ) from None
    resolved = os.path.realpath(path)
    for name, source in (inputs or {}).items():
        if source is None:
            continue
        same = os.path.realpath(os.fspath(source)) == resolved
        if not same and os.path.exists(path) and os.path.exists(source):
            same = os.path.samefile(path, source)  # hard links
        if same:
            raise OutputPathError(
                f"{option} {path} is also the {name} input, which writing it would destroy; choose another file"
            )
    if os.path.lexists(path) and not overwrite:
        raise OutputPathError(f"{option} {path} already exists; pass --overwrite to replace it or choose another file")
    return path
