#!/usr/bin/env python3
"""Read throughput of the FreeBSD kernel layer: C core, pure-Python twin, stock Intel32e.

Builds (with the forge) one amd64 machine with 256 MiB of kernel VA mapped
in 4 KiB pages at shuffled physical addresses (``Machine.kmem_alloc``), each
page filled with a pattern of its own, writes it as a minidump (``vmcore``)
and as a raw image, and measures through the Volatility layer API
(``layer.read`` / ``layer.mapping``):

(a) sequential 4 KiB reads over the whole range,
(b) 200,000 random 8-byte reads (the same addresses for every reader,
    page straddles included),
(c) ``mapping()`` over the whole range,

for our ``FreebsdMinidumpIntel32e`` on the C core, the same layer on the
Python twin (``KVM_VOL_PURE=1``), and Volatility's stock ``Intel32e`` over
the raw image.  Every reader must return the same data (CRC-32 of
everything read, computed on an untimed pass that precedes each timed one,
and of the mapping runs); the last line is
``ratio vs stock Intel32e: random8 X.XX seq4k Y.YY`` (C core / stock).

Not a timed test: run it by hand (``python benchmarks/bench_read.py``).
"""

import argparse
import os
import random
import sys
import tempfile
import time
import zlib

MIB = 1 << 20


def build_images(directory: str, span: int, seed: int):
    from kvm_vol.forge import build

    forged = build.build(ram_size=2 * span + (64 << 20), processes=[], seed=seed)
    m = forged.machine
    start = m.kmem_alloc(span)
    for i in range(span // 4096):
        va = start + i * 4096
        # a distinct, non-zero pattern per page: its VA and the word index
        m.mem.write(m.kva_to_pa(va), b"".join((va + 8 * w).to_bytes(8, "little") for w in range(512)))
    paths = forged.write(directory, stem="bench", formats=("vmcore", "raw"))
    return forged, start, paths


def make_layers(paths, kpml4phys: int, pure: bool, stock: bool):
    from volatility3.framework import contexts
    from volatility3.framework.layers import intel, physical

    ctx = contexts.Context()
    if stock:
        ctx.config["base.location"] = "file://" + os.path.abspath(paths["raw"])
        ctx.layers.add_layer(physical.FileLayer(ctx, "base", "base"))
        ctx.config["kernel.memory_layer"] = "base"
        ctx.config["kernel.page_map_offset"] = kpml4phys
        layer = intel.Intel32e(ctx, "kernel", "kernel")
        ctx.layers.add_layer(layer)
        return layer
    from kvm_vol.layers.kernel import FreebsdMinidumpIntel32e
    from kvm_vol.layers.physical import FreebsdDumpLayer

    old = os.environ.get("KVM_VOL_PURE")
    os.environ["KVM_VOL_PURE"] = "1" if pure else "0"
    try:
        ctx.config["base.location"] = "file://" + os.path.abspath(paths["vmcore"])
        ctx.layers.add_layer(physical.FileLayer(ctx, "base", "base"))
        ctx.config["phys.base_layer"] = "base"
        ctx.layers.add_layer(FreebsdDumpLayer(ctx, "phys", "phys"))
        ctx.config["kernel.memory_layer"] = "phys"
        ctx.config["kernel.page_map_offset"] = kpml4phys
        layer = FreebsdMinidumpIntel32e(ctx, "kernel", "kernel")
        ctx.layers.add_layer(layer)
    finally:
        if old is None:
            del os.environ["KVM_VOL_PURE"]
        else:
            os.environ["KVM_VOL_PURE"] = old
    assert layer._core.native == (not pure), "the layer is not on the requested core"
    return layer


def measure(layer, start: int, span: int, offsets):
    """Return {test: (seconds, crc[, runs])}.

    Each test first runs once untimed, computing the CRC of what it read
    (this also warms the page cache and the reader's file mapping, alike for
    every reader), then once timed, doing nothing but the reads.
    """
    read = layer.read
    out = {}
    crc = 0
    for va in range(start, start + span, 4096):
        crc = zlib.crc32(read(va, 4096), crc)
    t = time.perf_counter()
    for va in range(start, start + span, 4096):
        read(va, 4096)
    out["seq4k"] = (time.perf_counter() - t, crc)

    crc = 0
    for va in offsets:
        crc = zlib.crc32(read(va, 8), crc)
    t = time.perf_counter()
    for va in offsets:
        read(va, 8)
    out["random8"] = (time.perf_counter() - t, crc)

    t = time.perf_counter()
    runs = list(layer.mapping(start, span))
    elapsed = time.perf_counter() - t
    out["mapping"] = (elapsed, zlib.crc32(repr([(o, n, m) for o, n, m, _mn, _l in runs]).encode()), len(runs))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--span-mib", type=int, default=256, help="mapped kernel VA to read (MiB, default 256)")
    parser.add_argument("--reads", type=int, default=200_000, help="random 8-byte reads (default 200000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="where to write the images (default: a temporary directory)")
    args = parser.parse_args(argv)
    span = args.span_mib * MIB

    with tempfile.TemporaryDirectory(prefix="kvm-vol-bench-") as tmp:
        directory = args.dir or tmp
        t = time.perf_counter()
        forged, start, paths = build_images(directory, span, args.seed)
        print(f"forge: {args.span_mib} MiB of KVA at {start:#x} in 4 KiB pages, images in "
              f"{time.perf_counter() - t:.1f} s")
        kva = start & ((1 << 48) - 1)  # Volatility's 48-bit kernel addresses
        rng = random.Random(args.seed)
        offsets = [kva + rng.randrange(0, span - 8) for _ in range(args.reads)]
        # the forge's own memory is the reference for both tests
        expect_seq = 0
        for va in range(start, start + span, 4096):
            expect_seq = zlib.crc32(forged.machine.read_kva(va, 4096), expect_seq)

        from kvm_vol.core import engine

        results = {}
        for name, pure, stock in (("ours, C core", False, False), ("ours, Python twin", True, False),
                                  ("stock Intel32e (raw)", False, True)):
            if name == "ours, C core" and engine.native_module() is None:
                print("the C core is not built: pip install . (or python kvm_vol/core/_build_native.py)")
                return 2
            layer = make_layers(paths, forged.machine.kpml4phys, pure, stock)
            results[name] = res = measure(layer, kva, span, offsets)
            seq_s, _ = res["seq4k"]
            rnd_s, _ = res["random8"]
            map_s, _, nruns = res["mapping"]
            print(f"{name:<22} seq4k {span / seq_s / 1e6:9.1f} MB/s   random8 {args.reads / rnd_s:11,.0f} reads/s"
                  f"   mapping {map_s * 1e3:8.1f} ms ({nruns} runs)")

        crcs = {test: {r[test][1] for r in results.values()} for test in ("seq4k", "random8", "mapping")}
        ok = all(len(v) == 1 for v in crcs.values()) and crcs["seq4k"] == {expect_seq}
        print("CRC check: " + ("all readers agree (and match the forge's memory)" if ok else f"MISMATCH {crcs}"))
        c, stock = results["ours, C core"], results["stock Intel32e (raw)"]
        r8 = stock["random8"][0] / c["random8"][0]
        s4 = stock["seq4k"][0] / c["seq4k"][0]
        print(f"ratio vs stock Intel32e: random8 {r8:.2f} seq4k {s4:.2f}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
