"""`synbt` command line: one subcommand per module in SynBTLib.commands.

Each module in SynBTLib/commands (but _shared.py) defines ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed args). Registering imports no heavy module (torch,
MONAI, SimpleITK): a command imports what it needs when it runs, so `synbt --help` is quick.
A SynBTError becomes one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import SynBTError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synbt", description="Synthetic breast tumors in DCE-MRI (SynBT, arXiv 2509.03267)."
    )
    parser.add_argument("--version", action="version", version=f"synbt {__version__}")
    parser.add_argument("--verbose", action="store_true", help="also show ITK's own (multi-line) warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.verbose:
        from .io import show_itk_warnings

        show_itk_warnings(True)
    try:
        result = args.func(args)
    except SynBTError as exc:
        print(f"synbt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave that cannot be read or written
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"synbt {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synbt {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
