"""Method registry. A method is one module in this folder that decorates its class with
`@register`; modules are discovered by walking the folder, so adding a method edits nothing else."""

import importlib
import pkgutil

REGISTRY: dict = {}


def register(cls):
    REGISTRY[cls.name] = cls()
    return cls


def _discover():
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def names() -> list[str]:
    _discover()   # always: a method module imported directly must not hide the others
    return sorted(REGISTRY)


def get(name: str):
    from harness.config import UsageError, quote
    if name not in names():
        raise UsageError(f"unknown method {quote(name)}: choose one of {', '.join(names())}")
    return REGISTRY[name]
