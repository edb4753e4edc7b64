"""User-facing errors: a problem the user can fix, with a message that says what to do.

The app shows ``str(error)`` in ``st.error`` and the CLI prints it and exits with status 2;
neither shows a traceback for these. Every error a user can cause (with a widget, a
workspace file, a CLI argument, or a notebook's data and parameters) is one of these;
``ValueError`` and ``TypeError`` are left for programming errors, each raise marked with a
``# programming error`` comment (tests/unit/test_user_errors.py checks both rules).
"""

import re


class BiasLensError(Exception):
    """Base class of every error whose message is meant for the user."""


class DataError(BiasLensError):
    """A dataset cannot be read or is unusable (missing files, empty, single class...)."""


class ModelError(BiasLensError):
    """A model cannot be built or loaded (bad weights, corrupt file, unknown architecture...)."""


class WorkspaceError(BiasLensError):
    """The workspace file is invalid or names something that does not exist."""


class StoreError(BiasLensError):
    """The activation store is missing, incomplete, locked or lacks a requested layer."""


# The classes below are also ValueErrors: they replace ValueErrors that callers (and
# scikit-learn's estimator checks, and pydantic's validators) may catch as such.


class ParameterError(BiasLensError, ValueError):
    """A parameter set by the user (a widget, a notebook, an estimator's ``__init__``) is out of range or not one of its choices."""


class InputError(DataError, ValueError):
    """Arrays, rows, groups or saved entries given to a method have the wrong shape, length or values."""


class ConfigError(WorkspaceError, ValueError):
    """A workspace-file value breaks a rule between keys; a ValueError so that pydantic reports it as a problem."""


# An absolute POSIX path of two or more parts, not part of a URL, fraction or word.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\"`,;:()\[\]{}<>/]+/)+([^\s'\"`,;:()\[\]{}<>/]*)")


def redact_paths(text: str) -> str:
    """``text`` with every absolute server path cut to its last part (``…/name``).

    Hosted mode shows messages through this, so visitors never learn the server's layout.
    """
    return _ABSOLUTE_PATH.sub(lambda m: f"…/{m.group(1)}", text)


def first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's can run for a paragraph)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).split(". ")[0][:200]
