"""``psrl env``: versions and devices, for bug reports."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("env", help="print versions of python, torch, diffusers, ... and the devices")
    p.set_defaults(func=run)


def run(args) -> int:
    from psrl.rl.tracking import environment_info

    info = environment_info()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        print(f"{key:<{width}}  {value if value is not None else 'not installed'}")
    return 0
