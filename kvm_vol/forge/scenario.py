"""The population of the demo machine: what a small FreeBSD server runs.

Kernel processes as a 14.x GENERIC kernel starts them (pid 0 "kernel" with its
kernel threads, init, the idle process with one running thread per CPU, the
page daemon ...), a user land with daemons, a login shell, a stopped job, a
zombie, a multi-threaded daemon under its own uid, and a process whose name
uses all MAXCOMLEN characters (libkvm cuts ki_comm to 18 on dumps; we do not).
"""

from typing import List

from kvm_vol import freebsd as F
from kvm_vol.forge.kernel import ProcSpec, ThreadSpec
from kvm_vol.forge.userland import with_demo_userland

_KPROC = F.P_SYSTEM | F.P_KPROC | F.P_INMEM


def demo_processes() -> List[ProcSpec]:
    """Processes in creation (fork) order; ppid always refers to an earlier one."""
    T = ThreadSpec
    return with_demo_userland([
        ProcSpec(0, "kernel", 0, flags=_KPROC, threads=[
            T("swapper", "sleeping", wmesg="swapin"),
            T("if_io_tqg_0", "sleeping", wmesg="-"),
            T("if_config_tqg_0", "sleeping", wmesg="-"),
            T("softirq_0", "iwait"),
            T("thread taskq", "sleeping", wmesg="-"),
            T("aiod_kick taskq", "sleeping", wmesg="-"),
        ]),
        ProcSpec(1, "init", 0, flags=F.P_INMEM | F.P_EXEC | F.P_CONTROLT,
                 threads=[T("init", "sleeping", wmesg="wait")]),
        ProcSpec(2, "clock", 0, flags=_KPROC, threads=[T("clock (0)", "iwait"), T("clock (1)", "iwait")]),
        ProcSpec(3, "crypto", 0, flags=_KPROC, threads=[T("crypto", "sleeping", wmesg="crypto_wait")]),
        ProcSpec(4, "cam", 0, flags=_KPROC, threads=[T("doneq0", "sleeping", wmesg="-"),
                                                     T("scanner", "sleeping", wmesg="-")]),
        ProcSpec(5, "geom", 0, flags=_KPROC, threads=[T("g_event", "sleeping", wmesg="-"),
                                                      T("g_up", "sleeping", wmesg="-"),
                                                      T("g_down", "sleeping", wmesg="-")]),
        ProcSpec(6, "pagedaemon", 0, flags=_KPROC, threads=[T("dom0", "sleeping", wmesg="psleep"),
                                                            T("laundry: dom0", "sleeping", wmesg="launds"),
                                                            T("uma", "sleeping", wmesg="umarcl")]),
        ProcSpec(7, "vmdaemon", 0, flags=_KPROC, threads=[T("vmdaemon", "sleeping", wmesg="psleep")]),
        ProcSpec(8, "bufdaemon", 0, flags=_KPROC, threads=[T("bufdaemon", "sleeping", wmesg="qsleep"),
                                                           T("bufspacedaemon-0", "sleeping", wmesg="-")]),
        ProcSpec(9, "syncer", 0, flags=_KPROC, threads=[T("syncer", "sleeping", wmesg="syncer")]),
        ProcSpec(10, "audit", 0, flags=_KPROC, threads=[T("audit", "sleeping", wmesg="audit_wo")]),
        ProcSpec(11, "idle", 0, flags=_KPROC, threads=[T("idle: cpu0", "running", oncpu=0),
                                                      T("idle: cpu1", "can_run")]),
        ProcSpec(12, "intr", 0, flags=_KPROC, threads=[T("swi4: clock (0)", "iwait"),
                                                      T("swi1: netisr 0", "iwait"),
                                                      T("irq14: ata0", "iwait")]),
        ProcSpec(13, "rand_harvestq", 0, flags=_KPROC, threads=[T("rand_harvestq", "sleeping", wmesg="-")]),
        ProcSpec(412, "devd", 1, threads=[T("devd", "sleeping", wmesg="select")]),
        ProcSpec(562, "syslogd", 1, threads=[T("syslogd", "sleeping", wmesg="select")]),
        ProcSpec(640, "ntpd", 1, uid=123, gid=123, threads=[T("ntpd", "sleeping", wmesg="select")]),
        ProcSpec(712, "sshd", 1, threads=[T("sshd", "sleeping", wmesg="select")]),
        ProcSpec(730, "cron", 1, threads=[T("cron", "sleeping", wmesg="nanslp")]),
        ProcSpec(741, "nginx", 1, threads=[T("nginx", "sleeping", wmesg="sigsusp")]),
        ProcSpec(742, "nginx", 741, uid=80, gid=80, threads=[T("nginx", "sleeping", wmesg="kqread")]),
        ProcSpec(790, "getty", 1, threads=[T("getty", "sleeping", wmesg="ttyin")]),
        ProcSpec(810, "postgres", 1, uid=770, gid=770, threads=[
            T("postgres", "sleeping", wmesg="select"), T("postgres", "runq"),
            T("postgres", "lock"), T("postgres", "sleeping", wmesg="uwait")]),
        ProcSpec(901, "sshd", 712, threads=[T("sshd", "sleeping", wmesg="select")]),
        ProcSpec(903, "sshd", 901, uid=1001, gid=1001, ruid=1001, svuid=1001,
                 threads=[T("sshd", "sleeping", wmesg="select")]),
        ProcSpec(904, "sh", 903, uid=1001, gid=1001, groups=(0, 5, 920), flags=F.P_INMEM | F.P_EXEC | F.P_CONTROLT,
                 threads=[T("sh", "sleeping", wmesg="wait")]),
        ProcSpec(1010, "vi", 904, uid=1001, gid=1001, stopped=True,
                 threads=[T("vi", "suspended")]),
        ProcSpec(1011, "sleep", 904, uid=1001, gid=1001, state="ZOMBIE", flags=F.P_INMEM | F.P_EXEC | F.P_WEXIT,
                 threads=[T("sleep", "inactive")]),
        ProcSpec(1012, "su", 904, uid=0, ruid=1001, svuid=0, gid=1001, rgid=1001,
                 threads=[T("su", "sleeping", wmesg="wait")]),
        ProcSpec(1013, "csh", 1012, uid=0, gid=0, groups=(5,), threads=[T("csh", "sleeping", wmesg="pause")]),
        ProcSpec(1020, "exfiltrate-daemon12", 1, uid=0, gid=0,
                 threads=[T("exfiltrate-daemon12", "sleeping", wmesg="sbwait")]),
        ProcSpec(1014, "tar", 904, uid=1001, gid=1001, threads=[T("tar", "lock")]),
        ProcSpec(1021, "procstat", 1013, uid=0, gid=0, threads=[T("procstat", "running", oncpu=1)]),
    ])
