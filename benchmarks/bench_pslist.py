"""Benchmark: listing 100,000 processes / 200,000 threads, through the kvm API and through ``vol``.

Usage::

    python benchmarks/bench_pslist.py [--procs 100000] [--threads-per-proc 2] [--release 14] [--keep DIR]

Forges a FreeBSD machine on the real 14.x (or 15.0) layouts with ``--procs``
user processes (children of init, each with its own ucred, pstats, vmspace
and cached p_args, ``--threads-per-proc`` threads each), writes it as a
minidump (the default ``savecore`` format), and measures

* ``KVM.getprocs(KERN_PROC_PROC)`` and ``KERN_PROC_PROC | KERN_PROC_INC_THREAD``
  in this process (the handle opened beforehand: what libkvm users measure);
* ``vol -r none freebsd.pslist`` and ``vol -r csv freebsd.pslist`` end to end
  (interpreter start, plugin loading, stacking and rendering included).

Kernel stacks are reserved in KVA but not backed by memory (200,000 threads
would need 3 GiB for them, and nothing here reads them); user address spaces
are not forged (``exec_image=False``).  Both are noted in the output.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from kvm_vol import freebsd as F  # noqa: E402
from kvm_vol.forge import build as forge_build  # noqa: E402
from kvm_vol.forge.demo import pack_for_release  # noqa: E402
from kvm_vol.forge.kernel import Kernel, ProcSpec, ThreadSpec  # noqa: E402
from kvm_vol.forge.layout import Layout  # noqa: E402
from kvm_vol.forge.machine import Machine, _round_up  # noqa: E402
from kvm_vol.forge.scenario import demo_processes  # noqa: E402
from kvm_vol.symbols import isf as isfmod  # noqa: E402
from kvm_vol.symbols import typepacks  # noqa: E402


class BenchMachine(Machine):
    """A forge machine whose kernel stacks are KVA reservations without pages."""

    def kmem_alloc(self, size: int, guard_pages: int = 0) -> int:
        self._kva_cursor += guard_pages * 4096
        va = self._kva_cursor
        self._kva_cursor += -(-size // 4096) * 4096
        self.kernel_vm_end = max(self.kernel_vm_end, _round_up(self._kva_cursor, 1 << 21))
        return va


def population(nprocs: int, per_proc: int):
    """The demo's system processes plus ``nprocs`` workers under init, pids from 2000 up."""
    specs = [s for s in demo_processes() if s.pid < 100]
    states = ("sleeping", "sleeping", "runq", "lock")
    for i in range(nprocs):
        pid = 2000 + i
        threads = [ThreadSpec(f"worker{j}", states[(i + j) % len(states)], wmesg="select" if j == 0 else None)
                   for j in range(per_proc)]
        specs.append(ProcSpec(pid, f"worker-{i % 1000}", 1, uid=1000 + i % 50, gid=1000 + i % 50,
                              argv=[f"worker-{i % 1000}", "-n", str(i)], exec_image=False, threads=threads))
    return specs


def forge(release: str, nprocs: int, per_proc: int, directory: str):
    pack = pack_for_release(release)
    types = typepacks.load(pack)
    meta = types["metadata"]["producer"]["kvm_vol"]
    ram = _round_up((256 << 20) + nprocs * (per_proc * 2048 + 4096), 2 << 20)
    machine = BenchMachine(Layout(types), ram_size=ram)
    kernel = Kernel(machine, meta["release"], int(meta["freebsd_version"]), forge_build.banner_for(meta["release"]),
                    symbol_types=types.get("symbols", {}))
    for spec in population(nprocs, per_proc):
        kernel.add_process(spec)
    symbol_types = {name: {"type": desc} for name, desc in machine.symbol_types.items()}
    isf = isfmod.make_kernel_isf(types, machine.symbols, kernel.banner.encode(), symbol_types)
    forged = forge_build.Forged(pack=pack, machine=machine, kernel=kernel, isf=isf)
    paths = forged.write(directory, stem="bench", formats=("vmcore",))
    from kvm_vol.paths import user_symbols_dir

    isf_dir = user_symbols_dir() / "freebsd"
    isf_dir.mkdir(parents=True, exist_ok=True)
    forged.write_isf(str(isf_dir / f"bench-{pack}.json.xz"))
    return paths["vmcore"], forged.manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=100_000)
    ap.add_argument("--threads-per-proc", type=int, default=2)
    ap.add_argument("--release", default="14")
    ap.add_argument("--keep", help="directory for the image (default: a temporary one); "
                    "an image kept there by an earlier run with the same parameters is reused")
    ap.add_argument("--no-vol", action="store_true", help="measure the API only")
    ap.add_argument("--baseline", type=int, default=5000,
                    help="processes walked with Volatility objects for the same-run baseline")
    args = ap.parse_args()

    work = args.keep or tempfile.mkdtemp(prefix="kvm-vol-bench-")
    os.environ.setdefault("KVM_VOL_SYMBOLS_DIR", os.path.join(work, "symbols"))
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(work, "cache"))
    t0 = time.perf_counter()
    saved = os.path.join(work, f"bench-{args.release}-{args.procs}-{args.threads_per_proc}.json")
    if args.keep and os.path.exists(saved):  # the machine of an earlier run with the same parameters
        with open(saved) as fh:
            path, manifest = json.load(fh)
    else:
        path, manifest = forge(args.release, args.procs, args.threads_per_proc, work)
        if args.keep:
            with open(saved, "w") as fh:
                json.dump([path, manifest], fh)
        gc.collect()  # the forge's machine is garbage now: not the API's cost
    total_procs = len(manifest["processes"])
    total_threads = sum(len(p["threads"]) for p in manifest["processes"])
    print(f"forged {total_procs} processes, {total_threads} threads in {time.perf_counter() - t0:.1f} s; "
          f"{path}: {os.path.getsize(path) >> 20} MiB minidump")
    print("  (kernel stacks reserved, not backed; no user address spaces)")

    from kvm_vol.kvm.kvm import KVM

    # How fast this CPU runs Python right now (shared machines vary a lot): a fixed
    # reference loop, so the figures below can be compared between runs.
    t0 = time.perf_counter()
    acc = 0
    for i in range(1_000_000):
        acc += i
    print(f"reference: 10^6 Python additions in {time.perf_counter() - t0:.3f} s "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")

    t0 = time.perf_counter()
    kvm = KVM.open(path)
    print(f"open (automagic, stacking, ISF): {time.perf_counter() - t0:.2f} s")
    api_rate = 0.0
    for label, op in (("KERN_PROC_PROC", F.KERN_PROC_PROC),
                      ("KERN_PROC_PROC|INC_THREAD", F.KERN_PROC_PROC | F.KERN_PROC_INC_THREAD)):
        t0 = time.perf_counter()
        recs = kvm.getprocs(op)
        dt = time.perf_counter() - t0
        nprocs = len({r.offset for r in recs})
        assert nprocs == total_procs, (nprocs, total_procs)
        print(f"API getprocs({label}): {len(recs)} records, {nprocs} processes in {dt:.2f} s "
              f"= {nprocs / dt:,.0f} processes/s")
        api_rate = api_rate or nprocs / dt
    # Baseline in the same run: the Volatility object model, as a linux.pslist-style
    # plugin walks a process list (pid, comm, ucred->cr_uid, p_threads), on the
    # first --baseline processes of the same allproc.
    from kvm_vol.kvm.procs import iter_procs, iter_threads

    module = next(name for name in kvm.context.modules if kvm.context.modules[name].layer_name == kvm.layer_name)
    t0 = time.perf_counter()
    walked = 0
    for proc in iter_procs(kvm.context, module):
        _row = (int(proc.p_pid), proc.p_comm.cast("string", max_length=20), int(proc.p_ucred.cr_uid),
                sum(1 for _td in iter_threads(proc)))
        walked += 1
        if walked >= args.baseline:
            break
    base_rate = walked / (time.perf_counter() - t0)
    print(f"baseline, Volatility objects: {walked} processes = {base_rate:,.0f} processes/s; "
          f"API getprocs is {api_rate / base_rate:.1f}x that")
    if args.no_vol:
        return 0
    for renderer in ("none", "csv"):
        t0 = time.perf_counter()
        proc = subprocess.run(["vol", "-q", "-r", renderer, "-f", path, "freebsd.pslist"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t0
        if proc.returncode:
            print(proc.stderr[-2000:])
            return 1
        rows = max(0, len(proc.stdout.splitlines()) - 1) if renderer == "csv" else total_procs
        print(f"vol -r {renderer} freebsd.pslist: {dt:.2f} s end to end = {total_procs / dt:,.0f} processes/s"
              + (f" ({rows} rows)" if renderer == "csv" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
