"""Optional dependencies: which extra of the package brings each, and one line that says so.

The base install (``pip install -e .``) runs generation, chat, training and the world; the app,
the server, Ray Serve and 8/4-bit loading need more, each behind an extra in ``pyproject.toml``.
"""
from __future__ import annotations

import importlib

EXTRA_OF = {"gradio": "app", "fastapi": "serve", "uvicorn": "serve", "ray": "ray", "bitsandbytes": "gpu",
            "matplotlib": "bench"}


class MissingExtra(ModuleNotFoundError):
    """A feature's optional packages are not installed; the message says which and how to install them."""


def require(modules: tuple[str, ...], what: str) -> None:
    """Raise :class:`MissingExtra` when any of ``modules`` cannot be imported, naming ``what`` needs it."""
    absent = []
    for module in modules:  # imported, not just found: the feature imports them next anyway
        try:
            importlib.import_module(module)
        except ImportError:
            absent.append(module)
    if absent:
        extras = ",".join(dict.fromkeys(EXTRA_OF.get(m, m) for m in absent))
        raise MissingExtra(f"{what} needs {' and '.join(absent)}, which is not installed: pip install "
                           f"'anyany[{extras}]' (in a checkout: pip install -e '.[{extras}]').", name=absent[0])
