"""`python -m bench.load`: bad arguments are refused with a sentence, before any clip or server."""

from __future__ import annotations

import pytest

from bench.load import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "/nonexistent"], "no model folder /nonexistent/slider"),
        (["--workers", "0"], "--workers, --concurrency and --requests must be at least 1"),
        (["--concurrency", "0"], "--workers, --concurrency and --requests must be at least 1"),
        (["--warmup", "-1"], "--warmup at least 0"),
        (["--env", "ASD_REUSE_PORT"], "--env takes NAME=VALUE, not 'ASD_REUSE_PORT'"),
        (["--env", "=1"], "--env takes NAME=VALUE, not '=1'"),
    ],
)
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err
