"""Arguments the `asd-train` subcommands share, so library modules need not import the CLI."""

from __future__ import annotations

import argparse

from service.audio import Channel


def parse_channel(text: str) -> Channel:
    """`"0"`, `"1"`, ... or `"mean"` (average of all channels)."""
    if text == "mean":
        return "mean"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"channel must be a number >= 0 or 'mean', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"channel must be a number >= 0 or 'mean', got {text!r}")
    return value


def add_channel_argument(
    parser: argparse.ArgumentParser, text: str = "channel of multi-channel files, or 'mean' (default: 0)"
) -> None:
    """``--channel`` (`parse_channel`, default 0) with the help `text`."""
    parser.add_argument("--channel", type=parse_channel, default=0, help=text)
