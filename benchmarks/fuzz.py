#!/usr/bin/env python3
"""Long fuzz runs: ``python benchmarks/fuzz.py --cases 10000 [--seed N] [--jobs 2]``.

Builds mutated forge images (kvm_vol.forge.mutate), runs every kvm-vol
plugin on each through the real ``vol`` CLI (kvm_vol.forge.fuzzrun), and
prints a summary: cases, outcomes, tracebacks, hangs, unclear messages,
peak memory, and one example per (mutation, outcome, message) class.
"""

import argparse
import collections
import os
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--release", default="14")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="kvm-vol-fuzz-")
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(work, "cache"))
    os.environ.setdefault("KVM_VOL_SYMBOLS_DIR", os.path.join(work, "symbols"))

    from kvm_vol.forge import build, fuzzrun, mutate
    from kvm_vol.forge.demo import pack_for_release
    from kvm_vol.paths import user_symbols_dir

    pack = pack_for_release(args.release)
    forged = build.build(pack)
    (user_symbols_dir() / "freebsd").mkdir(parents=True, exist_ok=True)
    forged.write_isf(str(user_symbols_dir() / "freebsd" / f"fuzz-{pack}.json.xz"))
    fuzzrun.prepare()

    outcomes = collections.Counter()
    classes = {}
    peak = 0.0
    start = time.time()
    for i in range(args.cases):
        case = mutate.make_case(lambda: build.build(pack), os.path.join(work, "img"), args.seed, i)
        for plugin in fuzzrun.PLUGINS:
            res = fuzzrun.run_one(case.path, plugin, timeout=args.timeout)
            outcomes[res.outcome] += 1
            peak = max(peak, res.peak_rss_mib)
            key = (case.mutation, res.outcome, res.message.split(":")[0][:80])
            classes.setdefault(key, (case.detail, res.message))
        os.unlink(case.path)
        if (i + 1) % 100 == 0:
            print(f"{i + 1} cases, {dict(outcomes)}, {time.time() - start:.0f} s", file=sys.stderr)
    print(f"cases: {args.cases}  seed: {args.seed}  runs: {sum(outcomes.values())}  time: {time.time() - start:.0f} s")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"peak child RSS: {peak:.0f} MiB")
    for (mutation, outcome, _), (detail, message) in sorted(classes.items()):
        print(f"  {outcome:9} {mutation:20} {detail[:60]:60} {message[:120]}")
    return 1 if outcomes["traceback"] or outcomes["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
