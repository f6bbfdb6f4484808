"""Entry point of the ``surgseg`` command.

Subcommand modules are listed in ``_SUBCOMMANDS``; each provides
``register(subparsers)`` which adds its parser and sets ``func`` (called with
the parsed args, returns an exit code). Errors meant for users
(:class:`SurgsegError`, and a full disk or unwritable folder met by any
write) print as one clear line, not a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from ..errors import Cancelled, SurgsegError
from ..progress import TextProgress

_SUBCOMMANDS = [
    "surgseg_core.cli.video_cmd",
    "surgseg_core.cli.weights_cmd",
    "surgseg_core.cli.train_cmd",
    "surgseg_core.cli.export_cmd",
    "surgseg_core.cli.demo_cmd",
    "surgseg_core.cli.track_cmd",
    "surgseg_core.synth.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgseg",
        description="Segmentation and landmarks for endoscopic surgery videos.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'surgseg COMMAND --help' for the options and examples of each command.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"surgseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a subcommand module not written yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Cancelled as exc:
        _error(str(exc), prefix="surgseg: ")
        return 130
    except KeyboardInterrupt:
        _error("interrupted", prefix="surgseg: ")
        return 130
    except SurgsegError as exc:
        _error(str(exc))
        return 1
    except OSError as exc:
        # writes that do not go through atomic_path (a run folder's mkdir, a log line): a full disk,
        # a read-only or unwritable folder is the user's to fix, said in one line like the rest
        from ..atomic import write_error

        error = write_error(exc)
        if error is None:
            raise
        _error(str(error))
        return 1


def _error(message: str, prefix: str = "surgseg: error: ") -> None:
    TextProgress.end_line()  # a progress bar's unfinished line: the message starts its own
    print(f"{prefix}{message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
