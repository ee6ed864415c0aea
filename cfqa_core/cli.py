"""The single ``cfqa`` command. Each package owns its subcommands.

A package contributes a command group through an entry point of the group
``cfqa_edgecloud.commands`` naming a module that exposes
``register(subparsers) -> None``; the handlers it installs (``func``) import
their heavy dependencies lazily so that ``cfqa --help`` and the torch-free
edge install stay fast and light. The tree is assembled from the installed
metadata, so this module imports nothing from the layers above the core.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cfqa_core.errors import CfqaError

COMMAND_GROUP = "cfqa_edgecloud.commands"
# Groups in --help order; groups another distribution adds follow, by name.
_GROUP_ORDER: tuple[str, ...] = ("core", "edge", "cloud", "sim")


def command_modules() -> tuple[str, ...]:
    """The modules of the installed command groups (entry points of ``cfqa_edgecloud.commands``), in --help order."""
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=COMMAND_GROUP)}
    if not found:
        raise CfqaError(f"no '{COMMAND_GROUP}' entry points: cfqa-edgecloud is not installed "
                        "(run 'pip install -e .' in the repository)")
    rank = {name: i for i, name in enumerate(_GROUP_ORDER)}
    return tuple(found[n] for n in sorted(found, key=lambda n: (rank.get(n, len(rank)), n)))


def _version() -> str:
    """The installed distribution's version (a source tree without metadata says so)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cfqa-edgecloud")
    except PackageNotFoundError:
        return "unknown (not installed)"


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line (``cfqa edge run: error: ...``, exit 2), not the whole usage text.

    ``--help`` still prints the usage; subcommand parsers inherit this class.
    """

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="cfqa",
        description="Edge-cloud split inference with compressed features (CFQA).",
    )
    parser.add_argument("--version", action="version", version=f"cfqa {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in command_modules():
        # A group whose optional dependencies are missing is skipped, with the reason shown on use.
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # the package itself is absent in this install
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except CfqaError as exc:
        print(f"cfqa: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CfqaError as exc:
        print(f"cfqa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(
            f"cfqa {args.command}: error: missing dependency '{exc.name}'; "
            "install the matching extra, e.g. pip install 'cfqa-edgecloud[full]'",
            file=sys.stderr,
        )
        return 2
    except FileNotFoundError as exc:
        print(f"cfqa {args.command}: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cfqa {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
