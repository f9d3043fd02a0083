"""The whole kvm API on the two machine variants outside the shared harness.

The harness (``conftest.E2E_ARCHES``) forges i386 with PAE and arm64 with
4 KiB pages; i386 without PAE and arm64 with 16 KiB pages are forged by
``test_e2e_i386.py`` / ``test_e2e_arm64_16k.py``, which run the plugins
through ``vol`` on them.  Here every format x release of both variants goes
through the same in-process comparisons as the harness's machines
(getprocs, getargv/getenvv, loadavg, cp_time, swap with the blist, msgbuf,
files), so each cell of the README's support matrix is checked in full.
"""

import pytest

from conftest import RELEASES
from kvm_vol.forge.machine_i386 import MachineI386
from test_e2e_arm64_16k import FORMATS as FORMATS_16K
from test_e2e_arm64_16k import images_16k
from test_e2e_i386 import nopae_images
from test_kvm_procs import check_args, check_getprocs
from test_kvm_system_api import check_system_api

CASES = [pytest.param("i386", nopae_images, release, fmt, id=f"i386-nopae-{release}-{fmt}")
         for release in RELEASES for fmt in MachineI386.FORMATS]
CASES += [pytest.param("arm64", images_16k, release, fmt, id=f"arm64-16k-{release}-{fmt}")
          for release in RELEASES for fmt in FORMATS_16K]


@pytest.mark.parametrize("arch,images,release,fmt", CASES)
def test_variant_api_matches_manifest(session_dir, arch, images, release, fmt):
    from kvm_vol.kvm.kvm import KVM

    paths, manifest = images(session_dir, release)
    assert manifest["arch"] == arch
    assert (manifest.get("pae"), manifest["page_size"]) in ((False, 4096), (None, 16384))
    kvm = KVM.open(paths[fmt])
    check_getprocs(kvm, manifest)
    check_args(kvm, manifest, fmt)
    check_system_api(kvm, manifest, arch, fmt)
