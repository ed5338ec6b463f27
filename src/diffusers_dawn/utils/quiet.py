"""
Keeping third-party diagnostics off the terminal. MediaPipe's C++ graph (absl / glog, TensorFlow Lite) writes its
warnings straight to the process's stderr, where no Python setting or environment variable of mediapipe 0.10.14 reaches
them, and protobuf raises deprecation warnings on the way. They say nothing a user can act on, so the package's calls
into such libraries run inside [`third_party_output_silenced`], unless the package's logger shows debug messages
(`diffusers-dawn --debug`, or `logging.getLogger("diffusers_dawn").setLevel(logging.DEBUG)`).
"""

import contextlib
import io
import logging
import os
import sys
import warnings
from typing import Iterator


PACKAGE_LOGGER = "diffusers_dawn"


def third_party_output_wanted() -> bool:
    """Whether third-party diagnostics should be shown: the package's logger is at debug level."""
    return logging.getLogger(PACKAGE_LOGGER).isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def third_party_output_silenced() -> Iterator[None]:
    """
    Runs the block with Python warnings ignored and file descriptor 2 (the process's stderr, shared with native
    libraries) sent to the null device; the package's own messages must not be written inside the block.
    """
    if third_party_output_wanted():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable stderr descriptor (e.g. some embedded hosts)
            yield
            return
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """
    For a whole command: Python keeps writing to the terminal (`sys.stderr` moves to a copy of the descriptor), while
    whatever native libraries write to file descriptor 2 goes to the null device. MediaPipe's graph threads can log
    after the calls that [`third_party_output_silenced`] covers (e.g. when a graph is closed). Does nothing when
    `sys.stderr` is not the process's own stderr (e.g. captured by a test runner).
    """
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            raise ValueError("stderr is not file descriptor 2")
        sys.stderr.flush()
        terminal = os.dup(2)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        yield
        return
    previous = sys.stderr
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=previous.encoding, errors=previous.errors)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        sys.stderr.close()
        sys.stderr = previous
