#!/usr/bin/env python3
"""Opening a minidump whose bitmap describes 1 TiB of RAM: time and extra memory.

The forge writes a small machine as a v3 minidump whose ``dump_avail``
declares a terabyte of RAM (``write_minidump(..., dump_avail=...)``): the
bitmap is 32 MiB (one bit per 4 KiB page), almost all zeros and left as
holes in the sparse file.  In a fresh interpreter per core (C, twin), this
opens it the way ``vol`` does - parse (``kvm_vol.formats``), the physical
layer (``FreebsdDumpLayer``, whose segment table comes from the bitmap) and
the kernel layer (``FreebsdMinidumpIntel32e``) - and reads the kernel
banner, reporting the wall time and the peak resident memory above the
interpreter's baseline (``VmHWM`` - ``VmRSS`` before opening, from
``/proc/self/status``; file pages mapped count too).

Targets: < 1 s and < 64 MiB.  Run by hand: ``python benchmarks/bench_open.py``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TIB = 1 << 40

_CHILD = r"""
import json, os, sys, time

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0

from volatility3.framework import contexts
from volatility3.framework.layers import physical
from kvm_vol.core import engine
from kvm_vol.layers.kernel import FreebsdMinidumpIntel32e
from kvm_vol.layers.physical import FreebsdDumpLayer

path, kpml4phys, version_va, banner_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
engine.native_module()  # loading the extension is not part of opening a dump
with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS (Linux >= 4.0)
    fh.write("5")
base = status("VmRSS")
t = time.perf_counter()
ctx = contexts.Context()
ctx.config["base.location"] = "file://" + path
ctx.layers.add_layer(physical.FileLayer(ctx, "base", "base"))
ctx.config["phys.base_layer"] = "base"
phys = FreebsdDumpLayer(ctx, "phys", "phys")
ctx.layers.add_layer(phys)
ctx.config["kernel.memory_layer"] = "phys"
ctx.config["kernel.page_map_offset"] = kpml4phys
kernel = FreebsdMinidumpIntel32e(ctx, "kernel", "kernel")
ctx.layers.add_layer(kernel)
banner = kernel.read(version_va & ((1 << 48) - 1), banner_len)
elapsed = time.perf_counter() - t
print(json.dumps({
    "core": engine.implementation(), "seconds": elapsed, "extra": status("VmHWM") - base,
    "banner": banner.decode("latin-1"), "bitmap_bits": phys.dump.bitmap_index.nbits,
    "index_bytes": phys.core.index_bytes() if phys.core.native else None,
    "segments": len(phys._segments),
}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ram-tib", type=int, default=1, help="RAM the dump_avail declares (TiB, default 1)")
    parser.add_argument("--dir", help="where to write the image (default: a temporary directory)")
    args = parser.parse_args(argv)

    from kvm_vol.forge import build, writers

    with tempfile.TemporaryDirectory(prefix="kvm-vol-open-") as tmp:
        directory = args.dir or tmp
        forged = build.build(processes=[])
        m = forged.machine
        avail = list(m.mem.ranges) + [(1 << 32, args.ram_tib * TIB)]
        path = os.path.join(directory, "terabyte.vmcore")
        t = time.perf_counter()
        hdr = writers.write_minidump(m.mem, path, version=3, kpml4phys=m.kpml4phys, kva_end=m.kva_end,
                                     extra_pfns=sorted(m.uma_pfns), dump_avail=avail)
        st = os.stat(path)
        print(f"forge: {path}: bitmap {hdr.bitmapsize / 2**20:.0f} MiB for {args.ram_tib} TiB of dump_avail, "
              f"file {st.st_size / 2**20:.0f} MiB apparent, {st.st_blocks * 512 / 2**20:.1f} MiB on disk "
              f"(written in {time.perf_counter() - t:.1f} s)")
        version = forged.isf["symbols"]["version"]["address"]
        banner = forged.kernel.banner
        ok = True
        for pure in ("0", "1"):
            env = dict(os.environ, KVM_VOL_PURE=pure)
            out = subprocess.run([sys.executable, "-c", _CHILD, path, str(m.kpml4phys), str(version),
                                  str(len(banner))], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(out.stderr[-2000:])
                return 1
            res = json.loads(out.stdout.strip().splitlines()[-1])
            good = res["banner"] == banner and res["seconds"] < 1 and res["extra"] < 64 << 20
            ok = ok and good
            index = "" if res["index_bytes"] is None else f", C rank index {res['index_bytes'] / 1024:.0f} KiB"
            print(f"{res['core']:<50} open {res['seconds'] * 1000:7.1f} ms, peak extra memory "
                  f"{res['extra'] / 2**20:5.1f} MiB ({res['bitmap_bits']} bitmap bits, {res['segments']} segments"
                  f"{index}) {'ok' if good else 'MISSES TARGET'}")
        print("targets (< 1 s, < 64 MiB, banner read): " + ("met" if ok else "NOT met"))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
