"""The README's example sessions are real: every ``$ vol -q -f freebsd-demo.* ...`` shown is run
on the demo machine and must print what the README says.

The demo is ``kvm-vol demo``'s machine (FreeBSD 14.3 layouts, amd64), which is
what ``forge_images("amd64", "14")`` builds.  A line ``...`` in an example
stands for rows left out: the rows before it must open the real output and
the rows after it must close it.  Rows are compared word by word: ``vol``
separates cells with tabs, the README aligns them with spaces.
"""

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO, forge_images, run_vol

_COMMAND = re.compile(r"^\$ vol -q -f freebsd-demo\.(\w+) (.*?)\s*(#.*)?$")


def examples():
    """``(line number, format, plugin args, expected lines)`` of every example session in README.md."""
    found = []
    in_text = False
    lines = (REPO / "README.md").read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_text = line.strip() == "```text" and not in_text
            i += 1
            continue
        m = _COMMAND.match(line) if in_text else None
        if m is None:
            i += 1
            continue
        start = i + 1
        out = []
        i += 1
        while i < len(lines) and lines[i].strip() and not lines[i].startswith("```"):
            out.append(lines[i].rstrip())
            i += 1
        found.append((start, m.group(1), shlex.split(m.group(2)), out))
    return found


EXAMPLES = examples()


def test_the_readme_has_examples_of_every_plugin_it_documents():
    plugins = {args[0] for _line, _fmt, args, _out in EXAMPLES}
    assert {"freebsd.pslist", "freebsd.pstree", "freebsd.psargs", "freebsd.psenv", "freebsd.files",
            "freebsd.swap", "freebsd.loadavg", "freebsd.dmesg"} <= plugins


@pytest.mark.parametrize("line,fmt,args,expected", EXAMPLES,
                         ids=[f"README:{e[0]}:{' '.join(e[2])}" for e in EXAMPLES])
def test_readme_example_is_the_real_output(line, fmt, args, expected):
    paths, _manifest = forge_images("amd64", "14")
    proc = run_vol("-q", "-f", paths[fmt], *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    real = proc.stdout.splitlines()
    if real and real[0].startswith("Volatility 3 Framework"):
        real = real[1:]
    # Volatility's text renderer separates cells with tabs; the README aligns them with
    # spaces: compare the cells' words.
    real = [row.split() for row in real if row.strip()]
    expected = [row.split() if row != "..." else row for row in expected]
    if "..." in expected:
        cut = expected.index("...")
        head, tail = expected[:cut], expected[cut + 1:]
        assert real[:len(head)] == head, f"README.md line {line}"
        assert not tail or real[-len(tail):] == tail, f"README.md line {line}"
        assert len(real) >= len(head) + len(tail)
    else:
        assert real == expected, f"README.md line {line}"
