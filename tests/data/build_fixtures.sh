#!/bin/sh
# Rebuilds the committed DWARF/ELF fixtures of tests/test_dwarf2isf.py and
# tests/test_typepacks.py from dwarf_fixture.c.  Needs the PyPI "ziglang"
# package (0.15.2 was used); the tests themselves never run a compiler.
#
#   dwarf_fixture-amd64.o         x86_64-freebsd, DWARF 4, RELA relocations
#   dwarf_fixture-i386-dwarf5.o   x86-freebsd (ILP32), DWARF 5, REL relocations
#   dwarf_fixture-arm64-dwarf2.o  aarch64-freebsd, DWARF 2: member locations as
#                                 expressions, big-endian-style DW_AT_bit_offset
#                                 bit-fields; char is unsigned
#   kernel-fixture-amd64          the amd64 object linked like a kernel
#                                 (kernel_fixture.ld: KVA 0xffffffff80200000,
#                                 absolute kernbase), with DWARF
#   kernel-fixture-amd64.nodebug  the same link without debug sections
#
# -ffile-prefix-map keeps the build directory out of the DWARF, so the bytes
# do not depend on where the script runs; -fno-sanitize=all keeps zig's
# default UBSan runtime calls out of the objects.
set -eu
cd "$(dirname "$0")"
CC="python -m ziglang cc"
FLAGS="-g -O0 -fno-sanitize=all -ffile-prefix-map=$(pwd)=. -c dwarf_fixture.c"

$CC -target x86_64-freebsd $FLAGS -o dwarf_fixture-amd64.o
$CC -target x86-freebsd -gdwarf-5 $FLAGS -o dwarf_fixture-i386-dwarf5.o
$CC -target aarch64-freebsd -gdwarf-2 $FLAGS -o dwarf_fixture-arm64-dwarf2.o

$CC -target x86_64-freebsd -mcmodel=kernel -fno-pic -fno-pie -ffreestanding $FLAGS -o kernel-fixture-amd64.o
python -m ziglang ld.lld -T kernel_fixture.ld -o kernel-fixture-amd64 kernel-fixture-amd64.o
python -m ziglang ld.lld -T kernel_fixture.ld --strip-debug -o kernel-fixture-amd64.nodebug kernel-fixture-amd64.o
rm kernel-fixture-amd64.o
