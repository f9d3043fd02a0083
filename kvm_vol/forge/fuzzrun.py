"""Run kvm-vol's plugins and commands on fuzz cases and classify what happens.

Each (image, plugin) run is the real ``vol`` command line, executed in a
forked child of a process that imported Volatility once (a fresh ``vol``
process per run would spend most of its time importing).  The ``kvm-vol``
commands that read an image (:data:`COMMANDS`: ``info``, ``textdump list``,
``textdump extract``) run the same way through ``kvm_vol.cli.main``.  The parent waits
with a time limit and reads the child's peak memory from ``wait4``.
Outcomes:

* ``ok`` - exit status 0;
* ``error`` - a clean refusal: exit status non-zero and exactly one
  ``kvm-vol:`` line on stderr, no traceback (for a command: every stderr
  line is a ``kvm-vol:`` line, since ``textdump`` names each damaged member
  on a line of its own);
* ``unclear`` - non-zero exit without a traceback but without our one-line
  message either (e.g. Volatility's generic "unable to read a page" text);
* ``traceback`` - a Python traceback reached the user;
* ``hang`` - still running after the time limit (killed);
* ``modified`` - (long runs) the image changed while plugins read it;
* ``wrong`` - (with ``check_rows``) damage to one process changed the rows
  of another (:func:`rows_check`).

:func:`run_cases` and :func:`summarize` drive long runs
(``benchmarks/fuzz.py``): records go to a JSONL file as they are made.
"""

import io
import os
import resource
import signal
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Dict, List, Optional

#: Every installed kvm-vol plugin (filled by :func:`prepare`).
PLUGINS: List[str] = []

#: The ``kvm-vol`` commands that read an image, by the name a record gives
#: them, as the argument lists of ``kvm_vol.cli.main`` (``{image}`` and
#: ``{out}``, a directory that does not exist yet, are filled per run).
COMMANDS: Dict[str, List[str]] = {
    "kvm-vol info": ["info", "{image}"],
    "kvm-vol info --json": ["info", "--json", "{image}"],
    "kvm-vol textdump list": ["textdump", "list", "{image}"],
    "kvm-vol textdump extract": ["textdump", "extract", "-o", "{out}", "{image}"],
}


def runners(which: str = "plugins") -> List[str]:
    """The names a long run runs on each case: ``plugins``, ``commands`` or ``all``."""
    return {"plugins": list(PLUGINS), "commands": list(COMMANDS), "all": list(PLUGINS) + list(COMMANDS)}[which]


def _extract_dir(image: str) -> str:
    """Where ``textdump extract`` of a case writes (beside the case image; removed after the run)."""
    return image + ".files"


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


def warm(image: str) -> None:
    """Run one plugin through the CLI in the parent on an intact ``image``, then freeze the heap.

    The first run in a process pays for what later runs find in memory
    (Volatility's lazily imported modules, the ISF's decompressed JSON); doing
    it once here means every forked child starts where a second run would.
    ``gc.freeze()`` then moves the parent's objects out of the collector's
    reach: otherwise each child's first full collection walks (and, by
    touching reference counts, copies) the whole inherited heap.  Measured on
    the fuzz machine: 0.30 s -> 0.19 s per run.
    """
    import gc
    import importlib
    import pkgutil

    import kvm_vol

    # Import every kvm_vol module now: children then run the code of the moment
    # the run started, even if the package is reinstalled while it goes on.
    for mod in pkgutil.walk_packages(kvm_vol.__path__, "kvm_vol."):
        if not mod.name.endswith("_build_native"):
            importlib.import_module(mod.name)
    result = run_one(image, PLUGINS[0] if PLUGINS else "freebsd.pslist", in_process=True)
    if result.outcome != "ok":
        raise RuntimeError(f"fuzz warm-up on the intact image failed: {result.outcome} {result.message}")
    _memoize_cli_start()
    gc.freeze()


def _memoize_cli_start() -> None:
    """Remember two image-independent steps of every ``vol`` start, after the warm-up did them once.

    Each ``cli.main()`` walks Volatility's plugin directories again
    (``framework.import_files`` opens every file to ask whether it is a zip:
    ~50 ms, though every plugin is imported already) and argparse asks
    ``gettext`` to translate each of ~5,000 help strings (~30 ms, with no
    catalogue installed).  Neither depends on the image or touches kvm-vol:
    caching them makes a fuzz run cheaper without changing what is tested.
    """
    import argparse
    import functools

    from volatility3 import framework

    real_import_files, done = framework.import_files, {}

    def import_files(base_module, ignore_errors: bool = False):
        key = (base_module.__name__, tuple(base_module.__path__), ignore_errors)
        if key not in done:
            done[key] = real_import_files(base_module, ignore_errors)
        return list(done[key])

    framework.import_files = import_files
    argparse._ = functools.lru_cache(maxsize=None)(argparse._)
    argparse.ngettext = functools.lru_cache(maxsize=None)(argparse.ngettext)


def _run_cli(image: str, plugin: str, stdout_path: Optional[str] = None):
    """``vol -q -r json -f IMAGE PLUGIN`` (or the kvm-vol command ``plugin``) in this process.

    Returns (exit status, stderr text).  The output (``vol``'s JSON) goes to
    ``stdout_path`` if given, else nowhere.
    """
    if plugin in COMMANDS:
        from kvm_vol import cli as kvm_cli

        argv = [a.format(image=image, out=_extract_dir(image)) for a in COMMANDS[plugin]]

        def main():
            sys.exit(kvm_cli.main(argv))
    else:
        from volatility3 import cli

        sys.argv = ["vol", "-q", "-r", "json", "-f", image, plugin]
        main = cli.main
    err = io.StringIO()
    code = 0
    try:
        with open(stdout_path or os.devnull, "w") as out, redirect_stdout(out), redirect_stderr(err):
            try:
                main()
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
    return (code if isinstance(code, int) else 1), err.getvalue()


def _child(image: str, plugin: str, out_fd: int, stdout_path: Optional[str]) -> None:
    # Volatility's log handler holds the original stderr: send fd 2 to the
    # parent as well, so warnings and logged tracebacks are classified too.
    os.dup2(out_fd, 2)
    code, err = _run_cli(image, plugin, stdout_path)
    os.write(out_fd, err.encode("utf-8", "replace")[-20000:])
    os._exit(code)


def _classify(code: Optional[int], stderr: str, timeout: float, command: bool = False):
    """(outcome, message) for a run that exited with ``code`` (None: killed at the time limit).

    ``command``: the run was a kvm-vol command, which may name several
    problems, each on a ``kvm-vol:`` line of its own.
    """
    if code is None:
        return "hang", f"killed after {timeout:.0f} s"
    ours = [line for line in stderr.splitlines() if line.startswith("kvm-vol:")]
    if "Traceback" in stderr:
        return "traceback", stderr.strip().splitlines()[-1] if stderr.strip() else "traceback"
    if code == 0:
        return "ok", ""
    if len(ours) == 1:
        return "error", ours[0]
    if command and ours and len(ours) == len([line for line in stderr.splitlines() if line.strip()]):
        return "error", ours[0] + f" (and {len(ours) - 1} more kvm-vol: lines)"
    return "unclear", " | ".join(line for line in stderr.splitlines() if line.strip())[:300]


def run_one(image: str, plugin: str, timeout: float = 10.0, in_process: bool = False,
            stdout_path: Optional[str] = None) -> Result:
    """Run ``plugin`` on ``image`` through the CLI in a forked child (or, for the warm-up, here).

    ``stdout_path``: keep what the run printed (for a plugin, its rows as
    ``vol -r json`` renders them) in this file, for checks of the rows.
    """
    if in_process:
        start = time.monotonic()
        code, stderr = _run_cli(image, plugin)
        outcome, message = _classify(code, stderr, timeout, plugin in COMMANDS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return Result(image, plugin, outcome, time.monotonic() - start, peak, message)
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            _child(image, plugin, write_fd, stdout_path)
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
    outcome, message = _classify(None if status is None else os.waitstatus_to_exitcode(status), stderr, timeout,
                                 plugin in COMMANDS)
    if plugin in COMMANDS and os.path.lexists(_extract_dir(image)):
        import shutil

        shutil.rmtree(_extract_dir(image))
    return Result(image, plugin, outcome, seconds, peak, message)


# ----------------------------------------------------------------------
# rows: one process's damage must stay with that process

#: Kernel mutations that damage one process (``detail`` starts ``pid N``), and
#: the plugins whose rows for every *other* process must come out exactly as
#: from the intact image: a walk that stops or skips at the damage must not
#: lose, mix up or invent anything about the rest.  Not here: ``allproc-cycle``
#: and a wild ``p_list`` (they rightly cut the list), ``vnode-names`` (a vnode
#: and its name are shared by every process that holds it).
COLLATERAL: Dict[str, tuple] = {
    "self-parent": ("freebsd.pslist", "freebsd.psargs"),
    "unterminated-names": ("freebsd.pslist", "freebsd.psargs"),
    "absurd-counts": ("freebsd.pslist",),
    "threads-cycle": ("freebsd.pslist",),
    "wild-pointer": ("freebsd.pslist", "freebsd.files"),
    "pargs": ("freebsd.psargs",),
    "ps-strings": ("freebsd.psargs", "freebsd.psenv"),
    "file-table": ("freebsd.files",),
}


def damaged_pid(mutation: str, detail: str, plugin: str) -> Optional[int]:
    """The one process a case damaged, if ``plugin``'s rows for the others are to be checked."""
    import re

    if plugin not in COLLATERAL.get(mutation, ()) or "p_list.le_next" in detail:
        return None
    match = re.match(r"pid (\d+) ", detail)
    return int(match.group(1)) if match else None


def rows_by_pid(path: str, damaged: int) -> Dict[int, List[dict]]:
    """``vol -r json`` rows of a run (tree children flattened), grouped by PID, in output order.

    A row may name the process at the other end of a pipe (``peer ... (pid N
    fd M)``), found in that process's descriptor table; where N is the
    ``damaged`` process the name is dropped, since damage to N's table may
    rightly hide it.
    """
    import json
    import re

    peer = re.compile(rf" \(pid {damaged} fd [^)]*\)")
    with open(path) as fh:
        stack = list(reversed(json.load(fh)))
    by_pid: Dict[int, List[dict]] = {}
    while stack:
        row = dict(stack.pop())
        stack.extend(reversed(row.pop("__children", [])))
        if isinstance(row.get("DETAILS"), str):
            row["DETAILS"] = peer.sub("", row["DETAILS"])
        by_pid.setdefault(row["PID"], []).append(row)
    return by_pid


def rows_check(got_path: str, intact_path: str, damaged: int, plugin: str) -> str:
    """What is wrong with a damaged image's rows against the intact image's ("" if nothing).

    Every process but ``damaged`` must have exactly its intact rows, no
    process may appear that the intact image has not, and ``pslist`` must
    still list the damaged process.
    """
    got, want = rows_by_pid(got_path, damaged), rows_by_pid(intact_path, damaged)
    others = sorted(set(want) - {damaged})
    if not others:
        return f"the intact image has no {plugin} rows but pid {damaged}'s: nothing to compare"
    for pid in others:
        if got.get(pid) != want[pid]:
            have = got.get(pid) or []
            diff = next((f"row {i}: {a} != {b}" for i, (a, b) in enumerate(zip(have, want[pid])) if a != b),
                        f"{len(have)} rows, intact {len(want[pid])}")
            return f"pid {pid} (not the damaged pid {damaged}): {diff}"[:300]
    extra = sorted(set(got) - set(want))
    if extra:
        return f"pid {extra[0]} listed, which the intact image has not"
    if plugin == "freebsd.pslist" and damaged not in got:
        return f"the damaged pid {damaged} is no longer listed"
    return ""


class IntactRows:
    """The rows of each plugin on the intact image of each format, made once per run (cached)."""

    def __init__(self, base, workdir: str, timeout: float):
        self.base, self.workdir, self.timeout, self.paths = base, workdir, timeout, {}

    def __call__(self, fmt: str, plugin: str) -> str:
        key = (fmt, plugin)
        if key not in self.paths:
            directory = os.path.join(self.workdir, "intact")
            image = self.base.write(directory, stem="intact", formats=(fmt,))[fmt]
            out = os.path.join(directory, f"{fmt}-{plugin}.json")
            res = run_one(image, plugin, timeout=self.timeout, stdout_path=out)
            if res.outcome != "ok":
                raise RuntimeError(f"{plugin} on the intact {fmt} image: {res.outcome} {res.message}")
            self.paths[key] = out
        return self.paths[key]


# ----------------------------------------------------------------------
# long runs: cases -> JSONL records -> summary

def plugins_for_case(index: int, per_case: int, names: Optional[List[str]] = None) -> List[str]:
    """What case ``index`` runs: all of ``names`` (default :data:`PLUGINS`), or ``per_case`` in rotation.

    Rotation gives every plugin the same share of cases, and which plugins a
    case ran is recorded, so a case can be replayed from ``(seed, index)``.
    """
    names = list(PLUGINS) if names is None else list(names)
    if per_case <= 0 or per_case >= len(names):
        return names
    return [names[(index * per_case + j) % len(names)] for j in range(per_case)]


def _fingerprint(path: str):
    """(size, mtime, ctime) of an image: any write through any descriptor changes it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _drop_decompressed_copies(image: str) -> None:
    """Remove the cache's decompressed copies of a case image (each case would leave one otherwise)."""
    from kvm_vol.formats.compressed import cache_dir

    directory = cache_dir()
    if directory.is_dir():
        for copy in directory.glob(os.path.basename(image) + "-*"):
            copy.unlink()


def run_cases(base, workdir: str, seed: int, indices, out_path: str, per_case: int = 0,
              timeout: float = 10.0, draw_from=None, names: Optional[List[str]] = None,
              check_rows: bool = False) -> int:
    """Make and run cases ``indices`` of run ``seed``; append one JSON line per plugin run to ``out_path``.

    Each line is written with a single ``write`` on an ``O_APPEND`` descriptor,
    so several workers can share the file and a run stopped half-way keeps
    every record made so far.  A case whose image changed during its runs
    (evidence must be opened read-only) is recorded with outcome
    ``modified``.  ``draw_from`` is the list mutations are drawn from
    (default :data:`kvm_vol.forge.mutate.ALL_MUTATIONS`); ``names`` what
    runs on each case (default: every plugin; see :func:`runners`).  Returns
    the number of records written.  ``check_rows``: where a case damaged one
    process (:data:`COLLATERAL`), compare the other processes' rows with the
    intact image's (:func:`rows_check`); a difference is outcome ``wrong``.
    """
    import json

    from kvm_vol.forge import mutate

    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    written = 0
    intact = IntactRows(base, workdir, timeout) if check_rows else None
    rows_out = os.path.join(workdir, "rows.json")
    try:
        for index in indices:
            case = mutate.make_case(base, workdir, seed, index, draw_from=draw_from or mutate.ALL_MUTATIONS)
            before = _fingerprint(case.path)
            for plugin in plugins_for_case(index, per_case, names):
                pid = damaged_pid(case.mutation, case.detail, plugin) if check_rows else None
                res = run_one(case.path, plugin, timeout=timeout, stdout_path=rows_out if pid is not None else None)
                outcome, message = res.outcome, res.message
                if pid is not None and outcome == "ok":
                    wrong = rows_check(rows_out, intact(case.fmt, plugin), pid, plugin)
                    if wrong:
                        outcome, message = "wrong", wrong
                if _fingerprint(case.path) != before:
                    outcome = "modified"
                record = {"seed": seed, "index": index, "mutation": case.mutation, "format": case.fmt,
                          "detail": case.detail, "plugin": plugin, "outcome": outcome,
                          "seconds": round(res.seconds, 3), "peak_rss_mib": round(res.peak_rss_mib, 1),
                          "message": message.replace(case.path, "IMAGE")}
                os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
                written += 1
            if os.path.exists(case.path):
                os.unlink(case.path)
            _drop_decompressed_copies(case.path)
    finally:
        os.close(fd)
    return written


#: Outcomes a clean run must not have.
BAD_OUTCOMES = ("traceback", "hang", "unclear", "modified", "wrong")


def message_class(message: str) -> str:
    """A message with its numbers blanked, so equal failures at different offsets count once."""
    import re

    return re.sub(r"0x[0-9a-fA-F]+|\b\d+\b", "#", message)[:160]


def summarize(records) -> Dict[str, object]:
    """Totals over JSONL records: cases, runs, outcomes, peak RSS, slowest run, message classes."""
    from collections import Counter

    outcomes: Counter = Counter()
    by_mutation: Dict[str, Counter] = {}
    classes: Dict[tuple, dict] = {}
    cases = set()
    seeds = set()
    peak = slowest = 0.0
    slowest_record = None
    for rec in records:
        cases.add((rec["seed"], rec["index"]))
        seeds.add(rec["seed"])
        outcomes[rec["outcome"]] += 1
        by_mutation.setdefault(rec["mutation"], Counter())[rec["outcome"]] += 1
        peak = max(peak, rec["peak_rss_mib"])
        if rec["seconds"] > slowest:
            slowest, slowest_record = rec["seconds"], rec
        key = (rec["outcome"], rec["mutation"], message_class(rec["message"]))
        entry = classes.setdefault(key, {"count": 0, "example": rec})
        entry["count"] += 1
    return {"cases": len(cases), "seeds": sorted(seeds), "runs": sum(outcomes.values()),
            "outcomes": dict(outcomes), "by_mutation": {k: dict(v) for k, v in sorted(by_mutation.items())},
            "peak_rss_mib": peak, "slowest_seconds": slowest, "slowest": slowest_record,
            "classes": [{"outcome": k[0], "mutation": k[1], "message": k[2], **v}
                        for k, v in sorted(classes.items(), key=lambda kv: (kv[0][0], -kv[1]["count"]))]}
