"""A bounded fuzz run in CI: mutated forge images never give a traceback or a hang.

Fixed seed, one case per mutation (container and kernel structures) by
default, ``KVM_VOL_FUZZ_ROUNDS`` rounds for more; every kvm-vol plugin runs on
each through the real ``vol`` command line (in forked children, see
kvm_vol.forge.fuzzrun).  Long random runs: ``python benchmarks/fuzz.py --cases 10000``.
"""

import hashlib
import os

import pytest

from kvm_vol.forge import fuzzrun, mutate

SEED = 20261126
ROUNDS = int(os.environ.get("KVM_VOL_FUZZ_ROUNDS", "1"))


@pytest.fixture(scope="module")
def factory(session_dir):
    from kvm_vol.forge import build
    from kvm_vol.forge.demo import pack_for_release
    from kvm_vol.paths import user_symbols_dir

    pack = pack_for_release("14")
    forged = build.build(pack)
    isf_dir = user_symbols_dir() / "freebsd"
    isf_dir.mkdir(parents=True, exist_ok=True)
    forged.write_isf(str(isf_dir / f"fuzz-{pack}.json.xz"))
    fuzzrun.prepare()
    return lambda: build.build(pack)


def test_fuzz_cases(factory, tmp_path):
    results = []
    plan = [(r * 100 + i, name) for r in range(ROUNDS) for i, name in enumerate(mutate.ALL_MUTATIONS)]
    for index, name in plan:
        case = mutate.make_case(factory, str(tmp_path), SEED, index, mutation=name)
        digest = hashlib.sha256(open(case.path, "rb").read()).hexdigest() if os.path.exists(case.path) else None
        for plugin in fuzzrun.PLUGINS:
            res = fuzzrun.run_one(case.path, plugin, timeout=20)
            results.append((case, res))
        if digest is not None:  # evidence is never modified
            assert hashlib.sha256(open(case.path, "rb").read()).hexdigest() == digest, case
        os.unlink(case.path)
    bad = [(c.mutation, c.detail, r.outcome, r.message) for c, r in results
           if r.outcome in ("traceback", "hang", "unclear")]
    assert not bad, "\n".join(map(str, bad))
    assert {c.mutation for c, _ in results} == set(mutate.ALL_MUTATIONS)
    assert {r.plugin for _, r in results} == set(fuzzrun.PLUGINS) and len(fuzzrun.PLUGINS) >= 5
    assert max(r.peak_rss_mib for _, r in results) < 1024
