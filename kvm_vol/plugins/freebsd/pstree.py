"""``freebsd.pstree``: the process tree (parent = ki_ppid), pid 0 at the root, cycle-safe."""

import datetime
from typing import Dict, Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

import kvm_vol.volatility  # noqa: F401  (registers layers, stackers, symbol finder)
from kvm_vol.volatility import kernel_requirement, offset_mask, pid_requirement
from kvm_vol.kvm import procs
from volatility3.plugins.freebsd.pslist import PsList, creation_time
from kvm_vol.symbols.volsym import kvm_plugin



@kvm_plugin
class PsTree(interfaces.plugins.PluginInterface):
    """Shows the FreeBSD process tree; the nesting level is the depth below pid 0."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            kernel_requirement(),
            requirements.VersionRequirement(name="pslist", component=PsList, version=(2, 0, 0)),
            pid_requirement("Show only these processes, their ancestors and descendants"),
        ]

    @staticmethod
    def order(records: List[procs.ProcRecord]) -> List[Tuple[int, procs.ProcRecord]]:
        """(depth, record) in tree order: each parent before its children, children by pid.

        A process whose parent is not listed (or is itself) is a root; pid 0
        is its own parent in kinfo_proc terms (ki_ppid 0) and comes first.
        Each process is shown once, so a p_pptr cycle (smeared or forged
        memory) cannot loop: its members are shown as roots of what is left.
        """
        by_pid: Dict[int, procs.ProcRecord] = {}
        for rec in records:
            by_pid.setdefault(rec.pid, rec)
        children: Dict[int, List[procs.ProcRecord]] = {}
        roots = []
        for rec in by_pid.values():
            if rec.pid == rec.ppid or rec.ppid not in by_pid:
                roots.append(rec)
            else:
                children.setdefault(rec.ppid, []).append(rec)
        out: List[Tuple[int, procs.ProcRecord]] = []
        shown = set()

        def visit(start: procs.ProcRecord) -> None:
            stack = [(0, start)]
            while stack:
                depth, rec = stack.pop()
                if rec.pid in shown:
                    continue
                shown.add(rec.pid)
                out.append((depth, rec))
                for child in sorted(children.get(rec.pid, []), key=lambda r: r.pid, reverse=True):
                    stack.append((depth + 1, child))

        for rec in sorted(roots, key=lambda r: r.pid):
            visit(rec)
        for rec in sorted(by_pid.values(), key=lambda r: r.pid):  # members of parent cycles
            if rec.pid not in shown:
                visit(rec)
        return out

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        na = procs.value_or_na
        records = list(PsList.list_processes(self.context, self.config["kernel"]))
        mask = offset_mask(self.context, self.config["kernel"])
        wanted = set(self.config.get("pid") or [])
        ordered = self.order(records)
        if wanted:
            parents = {r.pid: r.ppid for r in records}
            kids: Dict[int, List[int]] = {}
            for r in records:
                if r.ppid != r.pid:
                    kids.setdefault(r.ppid, []).append(r.pid)
            selected = set()
            for pid in wanted:  # the process and its ancestors
                seen = set()
                while pid in parents and pid not in seen:
                    seen.add(pid)
                    selected.add(pid)
                    pid = parents[pid]
            todo = [p for p in wanted if p in parents]
            while todo:  # and its descendants
                for child in kids.get(todo.pop(), []):
                    if child not in selected:
                        selected.add(child)
                        todo.append(child)
            ordered = [(d, r) for d, r in ordered if r.pid in selected]
        for depth, rec in ordered:
            yield depth, (
                format_hints.Hex(rec.offset & mask), rec.pid, na(rec.tid), rec.ppid, rec.comm,
                na(rec.ruid), na(rec.rgid), creation_time(rec), rec.stat_name, len(rec.threads),
            )

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(
            [("OFFSET (V)", format_hints.Hex), ("PID", int), ("TID", int), ("PPID", int), ("COMM", str),
             ("UID", int), ("GID", int), ("CREATION TIME", datetime.datetime), ("STATE", str), ("THREADS", int)],
            self._generator(),
        )
