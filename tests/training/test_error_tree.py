"""The exception tree drawn in `training.errors` is the real one, training has no other, and the CLI prints it."""

from __future__ import annotations

import argparse

import pytest

import training
import training.errors
from service.errors import DetectorError
from tests.error_tree import assert_drawing_is_the_tree, drawn_tree, exceptions_defined_in
from training import cli


def test_the_drawing_is_the_class_tree() -> None:
    assert_drawing_is_the_tree(training.errors)


@pytest.mark.parametrize(
    "name",
    ["SynthError", "ModelConfigError", "ThresholdError", "UndefinedMetricError", "BenchmarkConfigError"],
)
def test_the_errors_that_were_value_errors_still_are(name: str) -> None:
    assert issubclass(getattr(training.errors, name), ValueError)


def test_no_other_training_module_defines_an_exception() -> None:
    own = exceptions_defined_in(training)
    assert own == sorted(f"training.errors.{name}" for name in drawn_tree(training.errors))


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
