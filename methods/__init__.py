"""Method registry. A method is one module in this folder that decorates its class with
`@register`; modules are discovered by walking the folder, and the folders named in
$HARNESS_METHODS_DIR (separated by the path separator), so adding a method edits nothing else.

Groups: `all` is the five methods of the comparison the harness was built for, a fixed list (a
subclass of one of them must not join it); `every` is every registered method."""

import importlib
import os
import pkgutil

REGISTRY: dict = {}
GROUPS = {"all": "the five methods of the original comparison", "every": "every registered method"}
ALL = ("lora", "lora-ga", "lora-one", "pissa", "riemannian")


def register(cls):
    known = type(REGISTRY.get(cls.name, cls()))
    if (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):   # a re-import is no clash
        from harness.config import UsageError
        raise UsageError(f"method {cls.name} is defined twice ({known.__module__} and {cls.__module__}): "
                         f"rename one")
    REGISTRY[cls.name] = cls()
    return cls


def _folders() -> list[str]:
    """This folder and $HARNESS_METHODS_DIR's, added to the package path so they import as methods.X."""
    from harness.config import UsageError
    for folder in filter(None, os.environ.get("HARNESS_METHODS_DIR", "").split(os.pathsep)):
        folder = os.path.abspath(folder)
        if not os.path.isdir(folder):
            raise UsageError(f"HARNESS_METHODS_DIR names {folder}, which is not a folder: fix or unset it")
        if folder not in __path__:
            __path__.append(folder)
    return list(__path__)


def _discover():
    for info in pkgutil.iter_modules(_folders()):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def names() -> list[str]:
    _discover()   # always: a method module imported directly must not hide the others
    return sorted(REGISTRY)


def group(name: str) -> list[str]:
    """The methods of a group (GROUPS), sorted."""
    return names() if name == "every" else list(ALL)


def group_of(name: str) -> str:
    """The smallest group holding a method."""
    return "all" if name in ALL else "every"


def get(name: str):
    from harness.config import UsageError, quote
    if name not in names():
        raise UsageError(f"unknown method {quote(name)}: choose one of {', '.join(names())}")
    return REGISTRY[name]
