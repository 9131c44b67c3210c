"""How every entry point runs: one offline rule, one logging rule, one exception policy (``run_cli``).

A user mistake (a bad value, a missing file, an unreachable database, a plug-in that does not load) ends in one
line, ``PROG: error: ...``, exit 1 — never a traceback; a usage error is ``configs.usage_error``'s two lines,
exit 2; Ctrl-C is one line, exit 130. ``ITL_DEBUG=1`` re-raises instead, for the traceback. Under torchrun /
accelerate every rank runs the entry point; only the main process (rank 0) prints, and a rank that waited for
rank 0's failing step (``ReportedElsewhere``) exits 1 without repeating rank 0's message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

# What a user can cause: OSError (paths, permissions, disk, sockets), ValueError (bad values; ConfigError,
# PluginError, pydantic's ValidationError are ValueErrors), LookupError (a name that is not there), RuntimeError
# (a model or database refusing what it was given). A bug of ours (TypeError, AttributeError, ...) keeps its
# traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, LookupError, RuntimeError)


class ReportedElsewhere(Exception):
    """An error another process has already printed (rank 0 of the same job): exit 1, quietly."""


# A database URL's password (scheme://user:PASSWORD@host) and a libpq key=value password: never printed or stored.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):([^@\s]+)@")
_DSN_PASSWORD = re.compile(r"\b(password\s*=\s*)('[^']*'|\S+)", re.I)


def redact(text: str, mask: str | None = "***") -> str:
    """``text`` with every database password in it replaced by ``mask`` (removed when ``mask`` is None)."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{mask}@" if mask else f"{m.group(1)}@", text)
    return _DSN_PASSWORD.sub(lambda m: m.group(1) + (mask or "''"), text)


class RedactingFilter(logging.Filter):
    """Masks passwords in every log line (a URL in a message or an argument, an exception's text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 outside torchrun/accelerate), before any process group."""
    return int(os.environ.get("RANK", "0"))


def configure_logging() -> None:
    """INFO on the main process; only errors from the other ranks of a multi-process job."""
    main = launched_rank() == 0
    logging.basicConfig(
        level=os.environ.get("LOGLEVEL", "INFO") if main else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    if not main:
        warnings.filterwarnings("ignore")
        # set before transformers/datasets are imported, which read these once
        for variable, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DATASETS_VERBOSITY", "error"),
                                ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")):  # fmt: skip
            os.environ.setdefault(variable, value)
        for name in ("transformers", "datasets", "trl", "accelerate"):  # and for those already imported
            logging.getLogger(name).setLevel(logging.ERROR)


def asks_help(argv: Sequence[str] | None) -> bool:
    return bool({"-h", "--help"} & set(sys.argv[1:] if argv is None else argv))


def run_cli(
    prog: str,
    run: Callable[[list[str] | None], Any],
    argv: Sequence[str] | None = None,
    *,
    show: Callable[[Any], None] | None = None,
    first_line: Callable[[list[str] | None], str] | None = None,
    errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> Any:
    """Run an entry point: ``run(argv)`` parses and works; ``show(outcome)`` prints its result (main process).

    ``first_line(argv)``, when given, is printed to stderr at once (before heavy imports), unless ``--help``.
    An outcome with ``interrupted=True`` (a training run stopped by Ctrl-C, saved) exits 130 after ``show``.
    Hub access is off (``HF_HUB_OFFLINE=1``) unless the caller's environment says otherwise: every model and
    dataset the project uses is local.
    """
    args = None if argv is None else list(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging()
    main_process = launched_rank() == 0
    if first_line is not None and main_process and not asks_help(args):
        print(f"{prog}: {first_line(args)}", file=sys.stderr, flush=True)
    debug = os.environ.get("ITL_DEBUG", "") not in ("", "0")
    try:
        outcome = run(args)
    except ReportedElsewhere:
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.exit(f"{prog}: interrupted; what was finished is on disk, the same command resumes where it can")
    except errors as err:
        if debug:
            raise
        sys.exit(f"{prog}: error: {one_line(err)}")
    if main_process and show is not None:
        show(outcome)
    if getattr(outcome, "interrupted", False):
        sys.exit(130)
    return outcome


def print_json(outcome: Any) -> None:
    """An entry point's result (a pydantic model) on stdout, as JSON."""
    print(json.dumps(outcome.model_dump(), indent=2))


def one_line(err: BaseException) -> str:
    """An exception as one line: its message's lines joined (pydantic and SQLAlchemy messages span several)."""
    text = redact(" ".join(part.strip() for part in str(err).splitlines() if part.strip())) or type(err).__name__
    return text if len(text) <= 600 else text[:597] + "..."
