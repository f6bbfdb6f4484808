"""Entry point of the ``surgseg`` command.

Subcommand modules are listed in ``_SUBCOMMANDS``; each provides
``register(subparsers)`` which adds its parser and sets ``func`` (called with
the parsed args, returns an exit code). Errors meant for users
(:class:`SurgsegError`) print as one clear line, not a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from ..errors import Cancelled, SurgsegError

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
        print(f"surgseg: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("surgseg: interrupted", file=sys.stderr)
        return 130
    except SurgsegError as exc:
        print(f"surgseg: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
