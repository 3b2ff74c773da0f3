"""What every console command shares: argument types checked at the door, and one error wrapper.

Argument types (``type=`` of ``argparse``) reject a bad number before any work starts, with the
argument's name (added by argparse), the value seen and what is allowed::

    nnUNetv2_selma_predict_large: error: argument --block: found 0; expected an integer >= 1

:func:`cli_command` wraps each command's ``main``: a user error (a file that is missing or
unreadable, an input that is not what was expected) ends in one ``error: <message>`` paragraph on
stderr and exit status 1 instead of a traceback. ``--debug`` (declared by :func:`add_debug_flag`)
or ``SELMA_DEBUG=1`` lets the exception through with its traceback, for bug reports.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable

DEBUG_ENV = "SELMA_DEBUG"


def _number(text: str, kind: type, expected: str, ok: Callable[[float], bool]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"found {text!r}; expected {expected}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"found {text}; expected {expected}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, counts, iterations, processes)."""
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def nonneg_int(text: str) -> int:
    """An integer >= 0 (seeds, optional worker counts where 0 means 'in this process')."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, standard deviations, scales)."""
    return _number(text, float, "a finite number > 0", lambda v: v > 0)


def finite_float(text: str) -> float:
    """Any finite number (means, spacings may be checked further by the command)."""
    return _number(text, float, "a finite number", lambda v: True)


def step_fraction(text: str) -> float:
    """A number in (0, 1]: nnU-Net's tile step size as a fraction of the patch size."""
    return _number(text, float, "a number in (0, 1] (a fraction of the patch size; nnU-Net's default 0.5)",
                   lambda v: 0 < v <= 1)


def open_fraction(text: str) -> float:
    """A number in (0, 1) (mask ratios)."""
    return _number(text, float, "a number in (0, 1)", lambda v: 0 < v < 1)


def unit_fraction(text: str) -> float:
    """A number in [0, 1) (warm-up fractions)."""
    return _number(text, float, "a number in [0, 1)", lambda v: 0 <= v < 1)


def connectivity(text: str) -> int:
    """A 3D voxel connectivity: 6 (faces), 18 (faces and edges) or 26 (faces, edges and corners)."""
    return _number(text, int, "6, 18 or 26 (neighbours of a voxel: faces, +edges, +corners)",
                   lambda v: v in (6, 18, 26))


def fold(text: str) -> str:
    """An nnU-Net fold: an integer >= 0 or ``all`` (kept as text, as nnU-Net's ``-f``)."""
    if text == "all" or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"found {text!r}; expected a fold number (0, 1, ...) or 'all'")


def device_name(text: str) -> str:
    """A torch device as nnU-Net's ``-device`` takes it: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    head, _, index = text.partition(":")
    if text in ("cpu", "cuda", "mps") or (head == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"found {text!r}; expected cpu, cuda, cuda:N or mps")


def block_edges(parser: argparse.ArgumentParser, values: list[int] | None) -> int | tuple[int, ...] | None:
    """A ``--block`` given as ``nargs="+"`` of :func:`positive_int`: one edge or three (z y x); None stays None.
    Any other count ends the command with argparse's usage error naming the argument."""
    if values is None:
        return None
    if len(values) not in (1, 3):
        parser.error(f"argument --block: found {len(values)} integers; expected 1 or 3 (z y x)")
    return values[0] if len(values) == 1 else tuple(values)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Declare ``--debug`` so that it shows in ``--help`` (:func:`cli_command` reads it)."""
    parser.add_argument("--debug", action="store_true",
                        help=f"show the Python traceback of an error (for bug reports; or set {DEBUG_ENV}=1)")


def _is_user_error(error: BaseException) -> bool:
    # the project's own exceptions carry messages written for the user; so do the OSError/ValueError/
    # KeyError it raises, and OSErrors from the file system name their file
    return isinstance(error, (OSError, ValueError, KeyError)) or type(error).__module__.startswith("nnunetv2_selma")


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
        return error.args[0]  # str(KeyError) is the repr of its argument, quotes included
    text = str(error).strip()
    return text or type(error).__name__


def cli_command(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Run a command's ``main(argv)``; turn a user error into ``error: <message>`` and exit status 1.

    Returns ``main``'s status (``None`` counts as 0). Usage errors stay argparse's (status 2).
    With ``--debug`` in the arguments or ``SELMA_DEBUG=1`` the exception is raised with its traceback.
    """

    @functools.wraps(main)
    def command(argv: list[str] | None = None) -> int:
        args = sys.argv[1:] if argv is None else list(argv)
        debug = "--debug" in args or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
        try:
            status = main(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:
            if debug or not _is_user_error(e):
                raise
            print(f"error: {_message(e)}", file=sys.stderr)
            return 1
        return 0 if status is None else int(status)

    return command
