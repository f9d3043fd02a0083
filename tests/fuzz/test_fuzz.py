"""A bounded fuzz run in CI: mutated forge images never give a traceback or a hang.

Fixed seed.  :func:`test_fuzz_every_mutation_every_plugin` runs one case per
mutation kind (container and kernel structures) through every kvm-vol plugin,
:func:`test_fuzz_every_mutation_every_command` through every ``kvm-vol``
command that reads an image;
:func:`test_fuzz_rotation` runs ``KVM_VOL_FUZZ_CASES`` (default 300) more
random cases, each through one plugin in rotation, the way the long runs
(``python benchmarks/fuzz.py --cases 10000 --plugins-per-case 1``) go.  Every
run is the real ``vol`` command line in a forked child (kvm_vol.forge.fuzzrun).
The other tests check the harness itself: that it can see a traceback, a
hang and an unclear message, and that one forged machine serves every case.
"""

import hashlib
import json
import os
import time

import pytest

from kvm_vol.forge import fuzzrun, mutate

SEED = 20261126
ROUNDS = int(os.environ.get("KVM_VOL_FUZZ_ROUNDS", "1"))
ROTATION_CASES = int(os.environ.get("KVM_VOL_FUZZ_CASES", "300"))


@pytest.fixture(scope="module")
def base(session_dir, tmp_path_factory):
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release
    from kvm_vol.paths import user_symbols_dir

    pack = pack_for_release("14")
    forged = build.build(pack)
    isf_dir = user_symbols_dir() / "freebsd"
    isf_dir.mkdir(parents=True, exist_ok=True)
    forged.write_isf(str(isf_dir / f"fuzz-{pack}.json.xz"))
    fuzzrun.prepare()
    intact = forged.write(str(tmp_path_factory.mktemp("intact")), stem="intact", formats=("vmcore",))["vmcore"]
    fuzzrun.warm(intact)
    return forged


def _sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _every_mutation(base, tmp_path, names):
    """One case per mutation kind (``ROUNDS`` rounds), each run through every one of ``names``."""
    results = []
    plan = [(r * 100 + i, name) for r in range(ROUNDS) for i, name in enumerate(mutate.EVERY_MUTATION)]
    for index, name in plan:
        case = mutate.make_case(base, str(tmp_path), SEED, index, mutation=name)
        digest = _sha256(case.path) if os.path.exists(case.path) else None
        for plugin in names:
            res = fuzzrun.run_one(case.path, plugin, timeout=20)
            results.append((case, res))
        if digest is not None:  # evidence is never modified
            assert _sha256(case.path) == digest, case
        os.unlink(case.path)
    bad = [(c.mutation, c.detail, r.plugin, r.outcome, r.message) for c, r in results
           if r.outcome in fuzzrun.BAD_OUTCOMES]
    assert not bad, "\n".join(map(str, bad))
    assert {c.mutation for c, _ in results} == set(mutate.EVERY_MUTATION)
    assert {r.plugin for _, r in results} == set(names)
    assert max(r.peak_rss_mib for _, r in results) < 1024
    return results


def test_fuzz_every_mutation_every_plugin(base, tmp_path):
    assert len(fuzzrun.PLUGINS) >= 9
    _every_mutation(base, tmp_path, fuzzrun.PLUGINS)


def test_fuzz_every_mutation_every_command(base, tmp_path):
    """``kvm-vol info`` and ``kvm-vol textdump`` read the same hostile images and must refuse as cleanly."""
    results = _every_mutation(base, tmp_path, list(fuzzrun.COMMANDS))
    outcomes = {(r.plugin, r.outcome) for _, r in results}
    # each command both reads some cases and refuses others: the runs reached the code, not a usage error
    assert ("kvm-vol info", "ok") in outcomes and ("kvm-vol info", "error") in outcomes
    assert ("kvm-vol textdump list", "ok") in outcomes and ("kvm-vol textdump list", "error") in outcomes
    assert ("kvm-vol textdump extract", "ok") in outcomes
    assert not any(os.path.lexists(c.path + ".files") for c, _ in results)  # extraction cleaned up


COLLATERAL_CASES = int(os.environ.get("KVM_VOL_FUZZ_COLLATERAL_CASES", "3"))


def test_fuzz_damage_stays_with_its_process(base, tmp_path):
    """One process's damaged structures change no other process's rows (a differential check).

    The outcome classes see tracebacks, hangs and unclear messages, not wrong
    rows: here every mutation of :data:`fuzzrun.COLLATERAL` runs through its
    plugins and :func:`fuzzrun.rows_check` compares the rows of every other
    process with the intact image's of the same format.
    """
    intact, checked = fuzzrun.IntactRows(base, str(tmp_path), timeout=60), []
    for name, plugins in fuzzrun.COLLATERAL.items():
        for i in range(COLLATERAL_CASES):
            case = mutate.make_case(base, str(tmp_path), SEED, 5000 + i, mutation=name)
            for plugin in plugins:
                pid = fuzzrun.damaged_pid(name, case.detail, plugin)
                if pid is None:  # a cut p_list: the processes after it are rightly lost
                    assert "p_list.le_next" in case.detail
                    continue
                out = str(tmp_path / "case.json")
                res = fuzzrun.run_one(case.path, plugin, timeout=60, stdout_path=out)
                assert res.outcome == "ok", (case, res)
                assert fuzzrun.rows_check(out, intact(case.fmt, plugin), pid, plugin) == "", (case.detail, plugin)
                checked.append((name, plugin))
            os.unlink(case.path)
    assert {n for n, _ in checked} == set(fuzzrun.COLLATERAL)


def test_rows_check_sees_wrong_rows(tmp_path):
    """The check can fail: a lost, changed or invented process, or a damaged process no longer listed."""
    def write(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps([dict(r, __children=[]) for r in rows]))
        return str(path)

    intact = write("intact.json", [{"PID": 1, "COMM": "init", "DETAILS": ""},
                                   {"PID": 7, "COMM": "sh", "DETAILS": "pipe 0x1 peer 0x2 (pid 9 fd 1)"},
                                   {"PID": 9, "COMM": "tar", "DETAILS": ""}])
    same_but_9 = write("a.json", [{"PID": 1, "COMM": "init", "DETAILS": ""},
                                  {"PID": 7, "COMM": "sh", "DETAILS": "pipe 0x1 peer 0x2"},
                                  {"PID": 9, "COMM": "t\\xff", "DETAILS": ""}])
    assert fuzzrun.rows_check(same_but_9, intact, 9, "freebsd.pslist") == ""
    assert "pid 7" in fuzzrun.rows_check(same_but_9, intact, 1, "freebsd.files")  # 7's peer note is 9's
    lost = write("b.json", [{"PID": 1, "COMM": "init", "DETAILS": ""}, {"PID": 9, "COMM": "tar", "DETAILS": ""}])
    assert "pid 7" in fuzzrun.rows_check(lost, intact, 9, "freebsd.pslist")
    extra = write("c.json", [{"PID": 1, "COMM": "init", "DETAILS": ""},
                             {"PID": 7, "COMM": "sh", "DETAILS": "pipe 0x1 peer 0x2"},
                             {"PID": 4242, "COMM": "ghost", "DETAILS": ""}])
    assert "4242" in fuzzrun.rows_check(extra, intact, 9, "freebsd.psargs")
    assert "no longer listed" in fuzzrun.rows_check(write("d.json", [
        {"PID": 1, "COMM": "init", "DETAILS": ""}, {"PID": 7, "COMM": "sh", "DETAILS": "pipe 0x1 peer 0x2"}]),
        intact, 9, "freebsd.pslist")
    assert fuzzrun.damaged_pid("pargs", "pid 741 p_args = 0x1", "freebsd.psargs") == 741
    assert fuzzrun.damaged_pid("pargs", "pid 741 p_args = 0x1", "freebsd.files") is None
    assert fuzzrun.damaged_pid("wild-pointer", "pid 5 p_list.le_next = 0x1", "freebsd.pslist") is None


def test_fuzz_rotation(base, tmp_path):
    out = tmp_path / "fuzz.jsonl"
    start = time.monotonic()
    written = fuzzrun.run_cases(base, str(tmp_path / "img"), SEED, range(1000, 1000 + ROTATION_CASES),
                                str(out), per_case=1, timeout=20, draw_from=mutate.EVERY_MUTATION,
                                check_rows=True)
    elapsed = time.monotonic() - start
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == len(records) == ROTATION_CASES
    summary = fuzzrun.summarize(records)
    bad = [c for c in summary["classes"] if c["outcome"] in fuzzrun.BAD_OUTCOMES]
    assert not bad, json.dumps(bad, indent=1)
    assert summary["cases"] == ROTATION_CASES
    if ROTATION_CASES >= 3 * len(mutate.EVERY_MUTATION):
        assert set(summary["by_mutation"]) == set(mutate.EVERY_MUTATION)
    if ROTATION_CASES >= len(fuzzrun.PLUGINS):
        assert {r["plugin"] for r in records} == set(fuzzrun.PLUGINS)
    assert summary["peak_rss_mib"] < 1024
    if ROTATION_CASES >= 100:  # the rows were compared where a case damaged one process
        assert any(fuzzrun.damaged_pid(r["mutation"], r["detail"], r["plugin"]) for r in records)
    print(f"{ROTATION_CASES} cases in {elapsed:.0f} s, {summary['outcomes']}")


def test_journal_restores_the_machine(base, tmp_path):
    """A kernel mutation leaves no trace in the shared machine once its image is written."""
    pages = {pfn: bytes(page) for pfn, page in base.machine.mem.pages.items()}
    for index, name in enumerate(sorted(mutate.KERNEL_MUTATIONS)):
        case = mutate.make_case(base, str(tmp_path), SEED, index, mutation=name)
        changed = {pfn for pfn, page in base.machine.mem.pages.items() if pages.get(pfn) != bytes(page)}
        assert not changed, (name, sorted(changed)[:5])
        assert set(base.machine.mem.pages) == set(pages)
        os.unlink(case.path)
    assert "write_kva" not in vars(base.machine)


def test_journal_mutation_reaches_the_image(base, tmp_path):
    """...and while the image is written, the mutation is in it (the journal does not undo too early)."""
    intact = base.write(str(tmp_path), stem="intact", formats=("raw",))["raw"]
    case = mutate.make_case(base, str(tmp_path), SEED, 5, mutation="self-parent")
    assert case.fmt in ("vmcore", "full", "raw")
    pid = int(case.detail.split()[1])
    proc = next(p for p in base.kernel.manifest_procs if p["pid"] == pid)
    pptr = base.machine.kva_to_pa(proc["offset"] + base.machine.layout.offsetof("proc", "p_pptr"))
    raw = base.write(str(tmp_path / "again"), stem="again", formats=("raw",))["raw"]
    assert _sha256(raw) == _sha256(intact)  # restored
    if case.fmt == "raw":
        with open(case.path, "rb") as fh:
            fh.seek(pptr)
            assert int.from_bytes(fh.read(8), "little") == proc["offset"]


def _fake_cli(monkeypatch, behaviour):
    from volatility3 import cli

    monkeypatch.setattr(cli, "main", behaviour)


def test_harness_sees_a_traceback(base, monkeypatch, tmp_path):
    def boom():
        raise KeyError("wild")

    _fake_cli(monkeypatch, boom)
    res = fuzzrun.run_one(str(tmp_path / "x"), "freebsd.pslist", timeout=20)
    assert res.outcome == "traceback" and "KeyError" in res.message


def test_harness_sees_a_logged_traceback(base, monkeypatch, tmp_path):
    """A traceback printed to fd 2 by a log handler (not through sys.stderr) counts as well."""

    def logged():
        os.write(2, b"Traceback (most recent call last):\n  ...\nValueError: x\n")

    _fake_cli(monkeypatch, logged)
    assert fuzzrun.run_one(str(tmp_path / "x"), "freebsd.pslist", timeout=20).outcome == "traceback"


def test_harness_sees_a_hang(base, monkeypatch, tmp_path):
    _fake_cli(monkeypatch, lambda: time.sleep(30))
    start = time.monotonic()
    res = fuzzrun.run_one(str(tmp_path / "x"), "freebsd.pslist", timeout=1)
    assert res.outcome == "hang" and time.monotonic() - start < 10


@pytest.mark.parametrize("code, stderr, outcome", [
    (0, "", "ok"),
    (1, "kvm-vol: x.vmcore: bitmap at offset 0x40: truncated\n", "error"),
    (1, "Volatility was unable to read a requested page:\nPage error 0x0 in layer\n", "unclear"),
    (1, "kvm-vol: a\nkvm-vol: b\n", "unclear"),
    (1, "Traceback (most recent call last):\nKeyError: 1\nkvm-vol: x\n", "traceback"),
    (None, "", "hang"),
])
def test_classify(code, stderr, outcome):
    assert fuzzrun._classify(code, stderr, 10)[0] == outcome


@pytest.mark.parametrize("code, stderr, outcome", [
    (1, "kvm-vol: t: member 'a' at offset 0x200: truncated\nkvm-vol: t: member 'b' at offset 0x400: bad\n", "error"),
    (1, "kvm-vol: a\nkvm-vol: b\nsomething else\n", "unclear"),
    (2, "usage: kvm-vol info [-h] [--json] IMAGE\n", "unclear"),
])
def test_classify_command(code, stderr, outcome):
    """A command may name several problems, one kvm-vol: line each; anything else is still unclear."""
    assert fuzzrun._classify(code, stderr, 10, command=True)[0] == outcome


def test_summarize_counts_cases_and_classes():
    recs = [{"seed": 1, "index": i // 2, "mutation": "truncate", "format": "raw", "detail": "", "plugin": p,
             "outcome": "error", "seconds": 0.1 * i, "peak_rss_mib": 50 + i,
             "message": f"kvm-vol: IMAGE: truncated at {i:#x}"} for i, p in enumerate(["a", "b", "a", "b"])]
    s = fuzzrun.summarize(recs)
    assert (s["cases"], s["runs"], s["peak_rss_mib"]) == (2, 4, 53)
    assert s["outcomes"] == {"error": 4} and len(s["classes"]) == 1 and s["classes"][0]["count"] == 4
    assert fuzzrun.plugins_for_case(3, 0) == fuzzrun.PLUGINS
    assert fuzzrun.plugins_for_case(3, 1, ["a", "b"]) == ["b"]
    assert fuzzrun.runners("all") == fuzzrun.PLUGINS + list(fuzzrun.COMMANDS)
