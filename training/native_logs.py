"""Keeping TensorFlow's native log lines out of `asd-train`'s output.

TensorFlow's C++ side writes to file descriptor 2 directly (oneDNN notices, "NodeDef mentions
attribute ...", absl's "All log messages before absl::InitializeLog()"), whatever
TF_CPP_MIN_LOG_LEVEL says for some of them, and a user reads an `E0000` line on a good run as a
failure. `filter_native_stderr()` points fd 2 at a pipe whose reader drops those lines and passes
every other line on; Python's own `sys.stderr` (progress bars, our messages, tracebacks) keeps
writing to the original stream directly.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading

# glog/absl lines ("E0000 00:00:1796282415.179751   22435 util.cc:131] ...") and absl's preamble.
NATIVE_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\]|WARNING: All log messages before absl::InitializeLog\(\))"
)


def drop_native(line: bytes) -> bool:
    return NATIVE_LINE.match(line) is not None


def filter_native_stderr() -> None:
    """Once per process, before TensorFlow is imported; a no-op when fd 2 is not usable."""
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:
        return
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    # Python's stderr goes to the original stream; only native writes to fd 2 pass the filter.
    sys.stderr = io.TextIOWrapper(
        os.fdopen(os.dup(original), "wb", buffering=0), write_through=True, errors="backslashreplace"
    )

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not drop_native(line):
                    os.write(original, line)

    threading.Thread(target=pump, name="native-stderr-filter", daemon=True).start()
    # TensorFlow's Python logger: retracing notices and the like are for its developers.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
