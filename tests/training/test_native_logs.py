"""TensorFlow's native log lines stay out of `asd-train`'s stderr; everything else passes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from training.native_logs import drop_native

SEEN_ON_A_GOOD_FIT = [
    b"I0000 00:00:1796282534.112438   22724 port.cc:153] oneDNN custom operations are on.\n",
    b"E0000 00:00:1796282546.081844   22724 util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512.\n",
    b"E0000 00:00:1796282622.776709   22724 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool\n",
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
]


@pytest.mark.parametrize("line", SEEN_ON_A_GOOD_FIT)
def test_native_lines_are_dropped(line: bytes) -> None:
    assert drop_native(line)


@pytest.mark.parametrize(
    "line",
    [
        b"asd-train fit: error: no clips found\n",
        b"fit summary (cae) -> models/x\n",
        b"training:  40%|####      | 4/10 [00:01<00:02]\n",
        b"Traceback (most recent call last):\n",
        b"E0000 is not a log line without its fields\n",
    ],
)
def test_our_own_lines_pass(line: bytes) -> None:
    assert not drop_native(line)


def test_the_filter_drops_native_writes_and_keeps_python_and_other_native_output() -> None:
    code = (
        "import os, sys, time\n"
        "from training.native_logs import filter_native_stderr\n"
        "filter_native_stderr()\n"
        f"os.write(2, {SEEN_ON_A_GOOD_FIT[1]!r})\n"
        "os.write(2, b'a native line of our own\\n')\n"
        "print('from python', file=sys.stderr)\n"
        "time.sleep(0.3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"DT_INT32" not in done.stderr
    assert b"a native line of our own" in done.stderr and b"from python" in done.stderr
