"""ISFs from other producers and stale identifier caches still find the kernel.

* An ISF shaped like dwarf2json's (PR #64: "linux" metadata, addresses masked
  to 48 bits, a NUL-terminated ``version`` constant) works like ours.
* An ISF that stock Volatility filed as ``mac`` before kvm-vol was installed
  (the Mac identifier also keys on ``version``) is still used.
"""

import base64
import os
import sqlite3

from conftest import run_vol_json
from test_e2e_pslist import expected_rows, strip


def _forge(release, tag, tmp_path, formats=("vmcore", "raw")):
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release

    pack = pack_for_release(release)  # freebsd-<release>-amd64
    banner = build.banner_for(pack.split("-")[1]).replace("GENERIC", tag)
    forged = build.build(pack, seed=11, banner=banner)
    return forged, forged.write(str(tmp_path / "img"), stem=tag, formats=formats)


def _dwarf2json_style(isf):
    out = dict(isf)
    out["metadata"] = {"format": "6.2.0", "producer": {"name": "dwarf2json", "version": "0.9.0"},
                       "linux": {"symbols": [{"kind": "dwarf", "name": "kernel.debug"}],
                                 "types": [{"kind": "dwarf", "name": "kernel.debug"}]}}
    symbols = {}
    for name, sym in isf["symbols"].items():
        sym = dict(sym)
        sym["address"] &= 0xFFFFFFFFFFFF
        symbols[name] = sym
    banner = base64.b64decode(symbols["version"]["constant_data"])
    symbols["version"]["constant_data"] = base64.b64encode(banner + b"\0").decode()
    out["symbols"] = symbols
    return out


def test_dwarf2json_style_isf(tmp_path):
    from kvm_vol.symbols import isf as isfmod

    forged, paths = _forge("15", "D2JSON", tmp_path)
    symdir = tmp_path / "symbols"
    isfmod.write_isf(_dwarf2json_style(forged.isf), symdir / "freebsd" / "kernel-d2j.json.xz")
    for fmt in ("vmcore", "raw"):
        rows = strip(run_vol_json("-s", str(symdir), "-f", paths[fmt], "freebsd.pslist"))
        assert rows == expected_rows(forged.manifest), fmt


def test_isf_cached_as_mac_is_still_used(tmp_path):
    from kvm_vol.paths import user_symbols_dir

    forged, paths = _forge("14", "STALEMAC", tmp_path, formats=("vmcore",))
    isf_path = user_symbols_dir() / "freebsd" / "stale-mac.json.xz"
    forged.write_isf(str(isf_path))
    rows = strip(run_vol_json("-f", paths["vmcore"], "freebsd.pslist"))  # fills the cache
    assert rows == expected_rows(forged.manifest)

    cache = os.path.join(os.environ["XDG_CACHE_HOME"], "volatility3", "identifier.cache")
    with sqlite3.connect(cache) as db:
        changed = db.execute("UPDATE cache SET operating_system = 'mac' WHERE location LIKE ?",
                             ("%stale-mac.json.xz",)).rowcount
    assert changed == 1  # the row exists and is now what stock Volatility would have written
    rows = strip(run_vol_json("-f", paths["vmcore"], "freebsd.pslist"))
    assert rows == expected_rows(forged.manifest)
    with sqlite3.connect(cache) as db:
        (os_name,) = db.execute("SELECT operating_system FROM cache WHERE location LIKE ?",
                                ("%stale-mac.json.xz",)).fetchone()
    assert os_name == "mac"  # still stale: the file did not change, so Volatility kept the row
