"""`granalign ls [REGISTRY]`: every registry and what is registered in it, one line each."""

from __future__ import annotations

import argparse

from harness.core.registry import REGISTRIES, RegistryError


def _registries() -> dict[str, object]:
    return dict(sorted(REGISTRIES.items()))


def cmd_ls(args: argparse.Namespace) -> int:
    regs = _registries()
    if args.registry is not None:
        key = args.registry.replace("-", " ").replace("_", " ")
        if key not in regs:
            raise RegistryError(f"unknown registry {args.registry!r}; registries: {', '.join(regs)}")
        regs = {key: regs[key]}
    for kind, reg in regs.items():
        names = reg.names()  # type: ignore[attr-defined]
        print(f"{kind} ({len(names)}): {reg.doc}" if reg.doc else f"{kind} ({len(names)})")  # type: ignore[attr-defined]
        width = max((len(n) for n in names), default=0)
        for name in names:
            print(f"  {name:<{width}}  {reg.describe(name)}")  # type: ignore[attr-defined]
        print()
    return 0


def add_commands(top: argparse._SubParsersAction, cache: argparse._SubParsersAction) -> None:
    p = top.add_parser("ls", help="list the registries (datasets, pairings, recipes, backends, ...) and their names")
    p.add_argument("registry", nargs="?", default=None, help="one registry only, e.g. 'pairing' or 'dataset'")
    p.set_defaults(func=cmd_ls)
