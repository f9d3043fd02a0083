"""Run kvm-vol's plugins on fuzz cases and classify what happens.

Each (image, plugin) run is the real ``vol`` command line, executed in a
forked child of a process that imported Volatility once (a fresh ``vol``
process per run would spend most of its time importing).  The parent waits
with a time limit and reads the child's peak memory from ``wait4``.
Outcomes:

* ``ok`` - exit status 0;
* ``error`` - a clean refusal: exit status non-zero and exactly one
  ``kvm-vol:`` line on stderr, no traceback;
* ``unclear`` - non-zero exit without a traceback but without our one-line
  message either (e.g. Volatility's generic "unable to read a page" text);
* ``traceback`` - a Python traceback reached the user;
* ``hang`` - still running after the time limit (killed).
"""

import io
import os
import resource
import signal
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import List, Optional

#: Every installed kvm-vol plugin (filled by :func:`prepare`).
PLUGINS: List[str] = []


@dataclass
class Result:
    image: str
    plugin: str
    outcome: str
    seconds: float
    peak_rss_mib: float
    message: str


def prepare() -> List[str]:
    """Import Volatility and every plugin once, in the parent, before forking.

    Returns (and stores in :data:`PLUGINS`) the names of the freebsd.* plugins,
    so every plugin that exists is fuzzed without a list to maintain.
    """
    import volatility3.cli  # noqa: F401
    import volatility3.plugins
    from volatility3 import framework

    framework.import_files(volatility3.plugins, True)
    names = sorted(name.rsplit(".", 1)[0] for name in framework.list_plugins() if name.startswith("freebsd."))
    PLUGINS[:] = names
    return names


def _child(image: str, plugin: str, out_fd: int) -> None:
    from volatility3 import cli

    sys.argv = ["vol", "-q", "-r", "json", "-f", image, plugin]
    err = io.StringIO()
    code = 0
    try:
        with redirect_stdout(open(os.devnull, "w")), redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exc:
                if isinstance(exc.code, str):
                    err.write(exc.code + "\n")
                    code = 1
                else:
                    code = exc.code or 0
    except BaseException:  # anything escaping the CLI is a traceback the user would see
        import traceback

        err.write("Traceback (most recent call last):\n" + traceback.format_exc())
        code = 99
    os.write(out_fd, err.getvalue().encode("utf-8", "replace")[-20000:])
    os._exit(code if isinstance(code, int) else 1)


def run_one(image: str, plugin: str, timeout: float = 10.0) -> Result:
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            _child(image, plugin, write_fd)
        finally:
            os._exit(98)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    chunks: List[bytes] = []
    status: Optional[int] = None
    rusage = None
    while True:
        try:
            data = os.read(read_fd, 65536)
            if data:
                chunks.append(data)
        except BlockingIOError:
            pass
        wpid, status, rusage = os.wait4(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            _, status, rusage = os.wait4(pid, 0)
            status = None
            break
        time.sleep(0.005)
    try:
        while True:
            data = os.read(read_fd, 65536)
            if not data:
                break
            chunks.append(data)
    except BlockingIOError:
        pass
    os.close(read_fd)
    seconds = time.monotonic() - start
    stderr = b"".join(chunks).decode("utf-8", "replace")
    peak = rusage.ru_maxrss / 1024 if rusage else 0.0
    if status is None:
        outcome, message = "hang", f"killed after {timeout:.0f} s"
    else:
        code = os.waitstatus_to_exitcode(status)
        ours = [l for l in stderr.splitlines() if l.startswith("kvm-vol:")]
        if "Traceback" in stderr:
            outcome, message = "traceback", stderr.strip().splitlines()[-1] if stderr.strip() else "traceback"
        elif code == 0:
            outcome, message = "ok", ""
        elif len(ours) == 1:
            outcome, message = "error", ours[0]
        else:
            outcome, message = "unclear", " | ".join(l for l in stderr.splitlines() if l.strip())[:300]
    return Result(image, plugin, outcome, seconds, peak, message)
