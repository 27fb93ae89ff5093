"""The exception tree drawn in `service.errors` is the real one, and the scoring core has no other."""

from __future__ import annotations

import pytest

import service
import service.errors
from tests.error_tree import assert_drawing_is_the_tree, drawn_tree, exceptions_defined_in


def test_the_drawing_is_the_class_tree() -> None:
    assert_drawing_is_the_tree(service.errors)


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
    own = exceptions_defined_in(service, skip="service.api")
    assert own == sorted(f"service.errors.{name}" for name in drawn_tree(service.errors))
