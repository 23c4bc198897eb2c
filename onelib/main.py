"""The entry point every driver executable goes through."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import log
from .errors import DriverError

Action = Callable[[Sequence[str]], str | None]


def run(ident: str, action: Action, argv: Sequence[str] | None = None) -> int:
    """Run ``action(argv)``; print what it returns on stdout; turn every failure into one
    line on stderr and a non-zero exit (never a traceback: oned shows stderr to users)."""
    log.setup(ident)
    args = list(sys.argv[1:] if argv is None else argv)
    log.info(f"start {shown_args(args)}")
    try:
        out = action(args)
    except DriverError as exc:
        log.error(f"failed: {exc}")
        sys.stderr.write(f"{exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:  # a bug: still one line for the operator, details in syslog
        import traceback

        log.error("internal error: " + traceback.format_exc().replace("\n", " | "))
        sys.stderr.write(f"internal error in {ident}: {type(exc).__name__}: {exc}\n")
        return 70
    if out:
        try:
            sys.stdout.write(out if out.endswith("\n") else out + "\n")
            sys.stdout.flush()
        except OSError as exc:  # oned's end of the pipe is gone, or the disk is full
            log.error(f"done, but the result could not be written: {exc}")
            sys.stderr.write(f"{ident}: done, but the result could not be written: {exc.strerror}\n")
            return 1
    log.info("done")
    return 0


# What an argument may be to reach the log as written: a number, a short word (host name,
# deploy id, format), an absolute path or host:path. Anything else is a payload (oned <= 6.6.1
# passes the base64 DS_DRIVER_ACTION_DATA as an argument, the datastore's secrets inside:
# SP_AUTH_TOKEN, LINSTOR keys) and is logged as its length only. Base64 never matches: it has
# no ':', cannot start with '/', and no payload is as short as a word.
_PLAIN_ARG = re.compile(r"-?[0-9]{1,12}|-|[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(?::/\S{0,4095})?|/\S{0,4095}")


def shown_args(args: Sequence[str]) -> str:
    """``args`` as the syslog line shows them: ids, hosts and paths; never payloads."""
    return " ".join(a if _PLAIN_ARG.fullmatch(a) else f"<{len(a)} characters not logged>" for a in args)


def finish(code: int) -> NoReturn:
    """Leave a driver process without the interpreter's teardown (freeing every module
    and document costs milliseconds on every disk operation): the action has returned,
    its output is flushed here, and no driver registers exit handlers or leaves threads."""
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
