"""The exception tree drawn in `training.errors` is the real one, training has no other, and the CLI prints it."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re

import pytest

import training
import training.errors
from service.errors import DetectorError
from training import cli

# A drawn line: the branch characters, the class name, what it is, and its built-in extra base if any.
_LINE = re.compile(r"^(?P<branch>[│├└─ ]*)(?P<name>[A-Z]\w+)(?P<rest>.*)$")
_EXTRA = re.compile(r"\((?P<base>ValueError|RuntimeError)\)\s*$")


def _drawn() -> dict[str, tuple[str | None, str | None]]:
    """Each class of the docstring's tree: its parent in the drawing and the built-in base it is marked with."""
    doc = training.errors.__doc__
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


def test_the_drawing_is_the_class_tree() -> None:
    drawn = _drawn()
    defined = {
        name
        for name, cls in vars(training.errors).items()
        if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == "training.errors"
    }
    assert set(drawn) == defined
    for name, (parent, extra) in drawn.items():
        cls = getattr(training.errors, name)
        expected = Exception if parent is None else getattr(training.errors, parent)
        assert cls.__bases__[0] is expected, name
        assert [b.__name__ for b in cls.__bases__[1:]] == ([extra] if extra else []), name


@pytest.mark.parametrize(
    "name",
    ["SynthError", "ModelConfigError", "ThresholdError", "UndefinedMetricError", "BenchmarkConfigError"],
)
def test_the_errors_that_were_value_errors_still_are(name: str) -> None:
    assert issubclass(getattr(training.errors, name), ValueError)


def test_no_other_training_module_defines_an_exception() -> None:
    own = []
    for info in pkgutil.walk_packages(training.__path__, "training."):
        module = importlib.import_module(info.name)
        own += [
            f"{info.name}.{name}"
            for name, cls in vars(module).items()
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == info.name
        ]
    assert sorted(own) == sorted(f"training.errors.{name}" for name in _drawn())


@pytest.mark.parametrize(
    "error",
    [training.errors.ExportError("the model differs"), DetectorError("the model differs")],
)
def test_main_prints_either_tree_as_one_line_with_status_2(
    error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(args: argparse.Namespace) -> None:
        raise error

    parser = cli.build_parser()
    real = parser.parse_args

    def parse(argv: list[str]) -> argparse.Namespace:
        args = real(argv)
        args.handler = handler
        return args

    monkeypatch.setattr(parser, "parse_args", parse)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["synth", "out"]) == 2
    assert capsys.readouterr().err == "asd-train synth: error: the model differs\n"
