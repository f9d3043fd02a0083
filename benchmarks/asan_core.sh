#!/usr/bin/env bash
# Run the C core's tests (tests/test_core_native.py: forge images, the §12
# edge cases, 5-level tables, random page tables and random minidumps;
# tests/test_core_i386.py: the i386 walks and minidumps, garbage tables;
# tests/test_core_arm64.py: the arm64 4/16 KiB walks, minidumps, hostile input) with
# the core built under AddressSanitizer (+ UBSan).  Works on a copy of the
# package in a scratch directory, so the checkout and the installed package
# keep their normal build.  Exit status 0 = no ASan report, all tests passed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r kvm_vol tests symbols "$work/"
find "$work/kvm_vol" -name '_native*.so' -delete
find "$work" -name __pycache__ -prune -exec rm -rf {} +
KVM_VOL_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1" \
KVM_VOL_LDFLAGS="-fsanitize=address,undefined" \
    python "$repo/kvm_vol/core/_build_native.py" "$work/kvm_vol/core" >/dev/null
libasan="$(gcc -print-file-name=libasan.so)"
libubsan="$(gcc -print-file-name=libubsan.so)"
cd "$work"
so="$(ls kvm_vol/core/_native*.so)"
nm -D "$so" | grep -q __asan_report || { echo "the core was not built with AddressSanitizer" >&2; exit 1; }
echo "ASan build: $so"
# Python's own allocations are not what is checked here: no leak report.
LD_PRELOAD="$libasan $libubsan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH="$work" \
    python -m pytest -q -p no:cacheprovider tests/test_core_native.py tests/test_core_i386.py tests/test_core_arm64.py "$@"
echo "AddressSanitizer: no errors"
