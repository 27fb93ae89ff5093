"""The exception tree drawn in `service.errors` is the real one, and the scoring core has no other."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import service
import service.errors

# A drawn line: the branch characters, the class name, what it is, and "(ValueError)" when it is one.
_LINE = re.compile(r"^(?P<branch>[│├└─ ]*)(?P<name>[A-Z]\w+)(?P<rest>.*)$")


def _drawn() -> dict[str, tuple[str | None, bool]]:
    """Each class of the docstring's tree: its parent in the drawing and whether it is marked a ValueError."""
    doc = service.errors.__doc__
    assert doc is not None
    block = doc.split("::\n", 1)[1].strip("\n").split("\n\n", 1)[0]
    found: dict[str, tuple[str | None, bool]] = {}
    parents: list[str] = []
    for line in block.splitlines():
        match = _LINE.match(line.removeprefix("    "))
        assert match is not None, line
        depth = len(match["branch"]) // 4
        del parents[depth:]
        found[match["name"]] = (parents[-1] if parents else None, "(ValueError)" in match["rest"])
        parents.append(match["name"])
    return found


def test_the_drawing_is_the_class_tree() -> None:
    drawn = _drawn()
    defined = {
        name
        for name, cls in vars(service.errors).items()
        if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == "service.errors"
    }
    assert set(drawn) == defined
    for name, (parent, marked) in drawn.items():
        cls = getattr(service.errors, name)
        expected = Exception if parent is None else getattr(service.errors, parent)
        assert cls.__bases__[0] is expected, name
        assert (ValueError in cls.__bases__) == marked, name


@pytest.mark.parametrize(
    ("name", "is_value_error"),
    [("AudioError", True), ("FeatureError", True), ("ThresholdChoiceError", True), ("DetectorError", False)],
)
def test_the_branches_callers_catch_as_value_errors_are_value_errors(name: str, is_value_error: bool) -> None:
    assert issubclass(getattr(service.errors, name), ValueError) is is_value_error


def test_a_clip_too_short_for_the_model_is_a_short_recording_with_the_same_code() -> None:
    assert issubclass(service.errors.ClipTooShortError, service.errors.AudioTooShortError)
    assert (
        service.errors.ClipTooShortError.code == service.errors.AudioTooShortError.code == "audio_too_short"
    )


def test_no_other_service_module_defines_an_exception() -> None:
    # The HTTP layer's ApiError and Starlette exceptions are answers, not part of the tree.
    own = []
    for info in pkgutil.walk_packages(service.__path__, "service."):
        if info.name.startswith("service.api"):
            continue
        module = importlib.import_module(info.name)
        own += [
            f"{info.name}.{name}"
            for name, cls in vars(module).items()
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == info.name
        ]
    assert sorted(own) == sorted(f"service.errors.{name}" for name in _drawn())
