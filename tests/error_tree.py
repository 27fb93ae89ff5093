"""The exception tree drawn in a module's docstring (service.errors, training.errors) is its real one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

# A drawn line: the branch characters, the class name, what it is, and its built-in extra base if any.
_LINE = re.compile(r"^(?P<branch>[│├└─ ]*)(?P<name>[A-Z]\w+)(?P<rest>.*)$")
_EXTRA = re.compile(r"\((?P<base>ValueError|RuntimeError)\)\s*$")


def drawn_tree(module: ModuleType) -> dict[str, tuple[str | None, str | None]]:
    """Each class of the docstring's tree: its parent in the drawing and the built-in base it is marked with."""
    doc = module.__doc__
    assert doc is not None
    block = doc.split("::\n", 1)[1].strip("\n").split("\n\n", 1)[0]
    found: dict[str, tuple[str | None, str | None]] = {}
    parents: list[str] = []
    for line in block.splitlines():
        match = _LINE.match(line.removeprefix("    "))
        assert match is not None, line
        depth = len(match["branch"]) // 4
        del parents[depth:]
        extra = _EXTRA.search(match["rest"])
        found[match["name"]] = (parents[-1] if parents else None, extra["base"] if extra else None)
        parents.append(match["name"])
    return found


def assert_drawing_is_the_tree(module: ModuleType) -> None:
    drawn = drawn_tree(module)
    defined = {
        name
        for name, cls in vars(module).items()
        if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == module.__name__
    }
    assert set(drawn) == defined
    for name, (parent, extra) in drawn.items():
        cls = getattr(module, name)
        expected = Exception if parent is None else getattr(module, parent)
        assert cls.__bases__[0] is expected, name
        assert [b.__name__ for b in cls.__bases__[1:]] == ([extra] if extra else []), name


def exceptions_defined_in(package: ModuleType, *, skip: str | None = None) -> list[str]:
    """`module.Class` of every exception class defined in the package's modules (those under `skip` left out)."""
    own = []
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if skip is not None and info.name.startswith(skip):
            continue
        module = importlib.import_module(info.name)
        own += [
            f"{info.name}.{name}"
            for name, cls in vars(module).items()
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == info.name
        ]
    return sorted(own)
