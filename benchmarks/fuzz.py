#!/usr/bin/env python3
"""Long fuzz runs: ``python benchmarks/fuzz.py --cases 10000 [--seed N] [--jobs 2] [--out FILE.jsonl]``.

Forges one machine, then makes mutated images from it (kvm_vol.forge.mutate)
and runs kvm-vol plugins on each through the real ``vol`` CLI in forked
children of warm worker processes (kvm_vol.forge.fuzzrun).  Every plugin run
is one JSON line in ``--out`` as soon as it finishes, so an interrupted run
keeps its results; ``--summarize FILE.jsonl`` prints the summary of such a
file: cases, plugin runs, outcomes, tracebacks, hangs, peak memory, slowest
run, and one example per (outcome, mutation, message) class.

``--plugins-per-case K`` runs K plugins per case in rotation instead of all
of them (a plugin run costs about 0.15 s; all nine per case for 10,000 cases
is about four CPU-hours, two hours on two workers).  ``--runners commands`` runs the
``kvm-vol`` commands that read an image (``info``, ``info --json``,
``textdump list``, ``textdump extract``) instead of the plugins, ``--runners
all`` both.
"""

import argparse
import json
import os
import sys
import tempfile
import time


def print_summary(summary: dict, elapsed: float = None) -> None:
    print(f"cases: {summary['cases']}  seeds: {summary['seeds']}  plugin runs: {summary['runs']}"
          + (f"  time: {elapsed:.0f} s" if elapsed is not None else ""))
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items())))
    print(f"peak child RSS: {summary['peak_rss_mib']:.0f} MiB  slowest run: {summary['slowest_seconds']:.2f} s")
    for mutation, counts in summary["by_mutation"].items():
        print(f"  {mutation:20} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("classes (outcome, mutation, count, message):")
    for c in summary["classes"]:
        print(f"  {c['outcome']:9} {c['mutation']:20} {c['count']:6}  {c['message'][:110]}")


def read_records(path: str):
    """The records of a JSONL file (``.xz`` too, as committed under ``benchmarks/results``).

    A line cut short by a killed run is skipped, not fatal.
    """
    if path.endswith(".xz"):
        import lzma

        fh = lzma.open(path, "rt")
    else:
        fh = open(path)
    with fh:
        for line in fh:
            try:
                yield json.loads(line)
            except ValueError:
                print(f"skipping a damaged record line: {line[:60]!r}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--first", type=int, default=0, help="index of the first case (to continue a run)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--release", default="14")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--plugins-per-case", type=int, default=0, help="0: every plugin")
    parser.add_argument("--runners", choices=("plugins", "commands", "all"), default="plugins",
                        help="what runs on each case: the freebsd.* plugins through vol (default), the kvm-vol "
                             "commands that read an image (info, info --json, textdump list, textdump extract), "
                             "or both")
    parser.add_argument("--mutations", choices=("every", "device", "classic"), default="every",
                        help="classic: the 13 container and kernel mutations only (as runs made before the "
                             "textdump and compressed-device mutations existed, e.g. seed 1 in docs/fuzzing.md); "
                             "device: those and the 2 device mutations (seed 2); every: all 19, with the "
                             "p_args, ps_strings, file table and name cache mutations")
    parser.add_argument("--only", metavar="NAME[,NAME...]",
                        help="draw only these mutations (e.g. file-table,pargs), to hunt in one class")
    parser.add_argument("--check-rows", action="store_true",
                        help="where a case damaged one process, compare the other processes' rows with the "
                             "intact image's (outcome 'wrong' if they differ; see fuzzrun.COLLATERAL)")
    parser.add_argument("--out", help="JSONL file to append records to (default: in the work directory)")
    parser.add_argument("--summarize", metavar="JSONL", help="only summarize an existing record file")
    args = parser.parse_args()

    from kvm_vol.forge import fuzzrun, mutate

    if args.summarize:
        try:
            print_summary(fuzzrun.summarize(read_records(args.summarize)))
        except BrokenPipeError:  # | head
            raise
        except (OSError, EOFError) as exc:  # lzma.LZMAError is an OSError
            print(f"fuzz.py: cannot read records from {args.summarize}: {exc}", file=sys.stderr)
            return 2
        return 0

    draw_from = {"every": mutate.EVERY_MUTATION, "device": mutate.DEVICE_ERA_MUTATIONS,
                 "classic": mutate.ALL_MUTATIONS}[args.mutations]
    if args.only:
        draw_from = args.only.split(",")
        unknown = sorted(set(draw_from) - set(mutate.EVERY_MUTATION))
        if unknown:
            print(f"fuzz.py: unknown mutation(s) {', '.join(unknown)}; known: {', '.join(mutate.EVERY_MUTATION)}",
                  file=sys.stderr)
            return 2

    work = tempfile.mkdtemp(prefix="kvm-vol-fuzz-")
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(work, "cache"))
    os.environ.setdefault("KVM_VOL_SYMBOLS_DIR", os.path.join(work, "symbols"))
    out = args.out or os.path.join(work, "fuzz.jsonl")

    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release
    from kvm_vol.paths import user_symbols_dir

    pack = pack_for_release(args.release)
    base = build.build(pack)
    (user_symbols_dir() / "freebsd").mkdir(parents=True, exist_ok=True)
    base.write_isf(str(user_symbols_dir() / "freebsd" / f"fuzz-{pack}.json.xz"))
    fuzzrun.prepare()
    fuzzrun.warm(base.write(os.path.join(work, "intact"), stem="intact", formats=("vmcore",))["vmcore"])

    start = time.time()
    indices = range(args.first, args.first + args.cases)
    workers = []
    for w in range(max(1, args.jobs)):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                fuzzrun.run_cases(base, os.path.join(work, f"img{w}"), args.seed, indices[w::max(1, args.jobs)],
                                  out, per_case=args.plugins_per_case, timeout=args.timeout,
                                  draw_from=draw_from, names=fuzzrun.runners(args.runners),
                                  check_rows=args.check_rows)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        workers.append(pid)
    failed = sum(os.waitpid(pid, 0)[1] != 0 for pid in workers)
    print(f"records: {out}")
    summary = fuzzrun.summarize(read_records(out))
    print_summary(summary, time.time() - start)
    bad = sum(summary["outcomes"].get(k, 0) for k in fuzzrun.BAD_OUTCOMES)
    return 1 if bad or failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # | head
        sys.exit(0)
