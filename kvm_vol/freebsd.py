"""FreeBSD kernel constants that DWARF does not carry (#defines).

Struct layouts and enums come from ISFs; flag bits, state codes and limits
from ``sys/proc.h`` and ``sys/param.h`` live here, once, for the readers and
for the forge.
"""

import datetime
from typing import Optional

MAXCOMLEN = 19  # sys/param.h: p_comm and td_name are char[MAXCOMLEN + 1]


def utc_time(seconds: float) -> Optional[datetime.datetime]:
    """A ``time_t`` (start times, ``kdh.dumptime``, tar mtimes) as an aware UTC datetime.

    None where it is outside what a datetime holds (years 1-9999): a damaged
    image can put any 64-bit value there, and the fuzzer found start times of
    the year 966,710,634 that made fromtimestamp() raise.
    """
    try:
        return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None

# struct proc p_flag bits (sys/proc.h)
P_CONTROLT = 0x00000002
P_KPROC = 0x00000004
P_HADTHREADS = 0x00000080
P_SYSTEM = 0x00000200
P_TRACED = 0x00000800
P_WEXIT = 0x00002000
P_EXEC = 0x00004000
P_STOPPED_SIG = 0x00020000
P_STOPPED_TRACE = 0x00040000
P_STOPPED_SINGLE = 0x00080000
P_JAILED = 0x01000000
P_INMEM = 0x10000000
P_STOPPED = P_STOPPED_SIG | P_STOPPED_SINGLE | P_STOPPED_TRACE
P_MAGIC = 0xBEEFFACE

# struct thread td_inhibitors bits (sys/proc.h)
TDI_SUSPENDED = 0x0001
TDI_SLEEPING = 0x0002
TDI_SWAPPED = 0x0004
TDI_LOCK = 0x0008
TDI_IWAIT = 0x0010

# enum td_states and enum p_states values (also in the ISF enums; kept for
# ISFs whose producer dropped anonymous enums)
TDS_INACTIVE, TDS_INHIBITED, TDS_CAN_RUN, TDS_RUNQ, TDS_RUNNING = range(5)
PRS_NEW, PRS_NORMAL, PRS_ZOMBIE = range(3)

# kinfo_proc ki_stat codes (sys/proc.h)
SIDL, SRUN, SSLEEP, SSTOP, SZOMB, SWAIT, SLOCK = range(1, 8)
KI_STAT_NAMES = {SIDL: "SIDL", SRUN: "SRUN", SSLEEP: "SSLEEP", SSTOP: "SSTOP",
                 SZOMB: "SZOMB", SWAIT: "SWAIT", SLOCK: "SLOCK"}

# --- load average, CPU time, message buffer, swap (issue 5) -------------
FSHIFT = 11  # sys/param.h: bits to the right of the fixed-point binary point
FSCALE = 1 << FSHIFT
CPUSTATES = ("user", "nice", "sys", "intr", "idle")  # sys/resource.h CP_USER .. CP_IDLE
MSG_MAGIC = 0x063062  # sys/msgbuf.h
MSGBUF_NEEDNL = 0x01
MSGBUF_WRAP = 0x02  # set once msg_wseq reached msg_size: the ring holds no NULs any more
SW_UNMAPPED = 0x01  # sys/vm/swap_pager.h sw_flags
SW_CLOSING = 0x04
NODEV = (1 << 64) - 1  # sys/types.h: (dev_t)(-1); dev_t is 64 bits since 12.0
BBSIZE = 8192  # sys/disklabel.h: swaponsomething() never hands out the first howmany(BBSIZE, PAGE_SIZE) blocks
PAGE_SIZE = 4096
# sys/blist.h: blmeta_t nodes of the swap bitmap; a leaf's bitmap covers BLIST_RADIX
# blocks (u_daddr_t, 64 bits on every architecture) and a meta node has BLIST_RADIX children.
BLIST_RADIX = 64

# --- open files (issue 5) ------------------------------------------------
# sys/filedesc.h: a descriptor table starts with NDFILE slots (embedded in struct
# filedesc0) and fdgrowtable() grows it to NDSLOTS(n) * NDENTRIES, NDENTRIES being
# the bits of a u_long map word: so fdt_nfiles is NDFILE or a multiple of NDENTRIES.
NDFILE = 20


def ndentries(pointer_size: int) -> int:
    """NDENTRIES = NDSLOTSIZE * NBBY: 64 on LP64, 32 on ILP32 (a u_long is pointer-sized)."""
    return 8 * pointer_size


# sys/file.h f_type; 15.0 added INOTIFY and JAILDESC.
DTYPE_NAMES = {0: "NONE", 1: "VNODE", 2: "SOCKET", 3: "PIPE", 4: "FIFO", 5: "KQUEUE", 6: "CRYPTO",
               7: "MQUEUE", 8: "SHM", 9: "SEM", 10: "PTS", 11: "DEV", 12: "PROCDESC", 13: "EVENTFD",
               14: "TIMERFD", 15: "INOTIFY", 16: "JAILDESC"}
DTYPE_NONE, DTYPE_VNODE, DTYPE_SOCKET, DTYPE_PIPE, DTYPE_FIFO, DTYPE_KQUEUE = range(6)
DTYPE_SHM, DTYPE_SEM, DTYPE_PTS = 8, 9, 10
# f_flag bits (sys/fcntl.h: FREAD, FWRITE and the O_* bits FMASK keeps) in
# procstat -f's order and letters: r w a s f n d l.
FILE_FLAG_LETTERS = ((0x0001, "r"), (0x0002, "w"), (0x0008, "a"), (0x0040, "s"), (0x0080, "f"),
                     (0x0004, "n"), (0x00010000, "d"), (0x4000, "l"))
FREAD, FWRITE, O_NONBLOCK, O_APPEND = 0x0001, 0x0002, 0x0004, 0x0008
VV_ROOT = 0x0001  # sys/vnode.h v_vflag: root of its file system
NCF_ISDOTDOT = 0x02  # sys/kern/vfs_cache.c nc_flag
NCF_NEGATIVE = 0x20
# Pseudo descriptors, named like procstat -f (KF_FD_TYPE_*).
FD_TRACE, FD_TEXT, FD_CWD, FD_ROOT, FD_JAIL, FD_CTTY = "trace", "text", "cwd", "root", "jail", "ctty"
FD_MMAP = "mmap"  # libprocstat's PS_FST_UFLAG_MMAP entries (procstat -f shows them as "mmap")
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 28  # sys/socket.h
SOCK_TYPES = {1: "STREAM", 2: "DGRAM", 3: "RAW", 4: "RDM", 5: "SEQPACKET"}
IPPROTO_NAMES = {0: "IP", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPV6", 132: "SCTP"}
INP_IPV4, INP_IPV6 = 0x1, 0x2  # netinet/in_pcb.h inp_vflag
SO_ACCEPTCONN = 0x0002  # sys/socket.h so_options: listen() was called (the sol_* half of the union is live)
SHM_ANON = 1  # sys/mman.h: ((char *)1), the path of an anonymous shm_open()
KTRFAC_SYSCALL, KTRFAC_SYSRET, KTRFAC_NAMEI = 1 << 1, 1 << 2, 1 << 3  # sys/ktrace.h p_traceflag (1 << KTR_*)
# vm_map entries (vm/vm.h, vm/vm_map.h): what procstat_getfiles(..., mmapped) looks at.
VM_PROT_READ, VM_PROT_WRITE, VM_PROT_EXECUTE = 0x01, 0x02, 0x04
MAP_ENTRY_IS_SUB_MAP, MAP_ENTRY_COW = 0x00000002, 0x00000004
OBJT_SWAP, OBJT_VNODE = 1, 2  # enum obj_type (14.x/15.0: OBJT_DEFAULT is OBJT_SWAP)

# kern.proc sysctl operations (sys/sysctl.h), the ``op`` of kvm_getprocs()
KERN_PROC_ALL = 0
KERN_PROC_PID = 1
KERN_PROC_PGRP = 2
KERN_PROC_SESSION = 3
KERN_PROC_TTY = 4
KERN_PROC_UID = 5
KERN_PROC_RUID = 6
KERN_PROC_PROC = 8
KERN_PROC_RGID = 10
KERN_PROC_GID = 11
KERN_PROC_INC_THREAD = 0x10

NO_PID = 100000  # sys/proc.h: ki_tpgid when the terminal has no foreground group
NODEV = 0xFFFFFFFFFFFFFFFF  # sys/param.h: (dev_t)(-1), ki_tdev without a controlling tty
KI_CTTY = 0x00000001  # sys/user.h ki_kiflag: the session has a controlling vnode
KI_SLEADER = 0x00000002  # ... the process is its session's leader
KI_LOCKBLOCK = 0x00000004  # ... the thread is blocked on a lock
PS_INMEM = 0x00001  # sys/user.h ki_sflag: loaded into memory (P_INMEM)

# struct sysentvec sv_flags (sys/sysent.h)
SV_ILP32 = 0x000100
SV_LP64 = 0x000200
SV_IA32 = 0x004000

# Limits of the kernel's argv/envp readers (sys/syslimits.h, kern_proc.c)
PATH_MAX = 1024
ARG_MAX_LP64 = 2 * 256 * 1024  # ARG_MAX of a 64-bit kernel (sys/syslimits.h)
ARG_MAX_ILP32 = 256 * 1024  # ARG_MAX of an __ILP32__ kernel (i386): "max bytes for KVA-starved archs"
GET_PS_STRINGS_CHUNK_SZ = 256  # get_ps_strings() reads strings in chunks of this size
# enum vtype (sys/vnode.h), the KF_VTYPE numbering.
VTYPE_NAMES = {0: "VNON", 1: "VREG", 2: "VDIR", 3: "VBLK", 4: "VCHR", 5: "VLNK", 6: "VSOCK", 7: "VFIFO",
               8: "VBAD", 9: "VMARKER"}
