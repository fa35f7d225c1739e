"""`granalign ls [REGISTRY]`: every registry and what is registered in it, one line each."""

from __future__ import annotations

import argparse

from harness.core.registries import load_all
from harness.core.registry import REGISTRIES, RegistryError


def _registries() -> dict[str, object]:
    """Every registry, filled: the modules that register components are imported here, as
    no other command imports them all."""
    load_all()
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


def _ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("registry", nargs="?", default=None, help="one registry only, e.g. 'pairing' or 'dataset'")
    p.set_defaults(func=cmd_ls)


ARGUMENTS = {"ls": _ls_arguments}
