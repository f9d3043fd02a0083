"""FreeBSD kernel constants that DWARF does not carry (#defines).

Struct layouts and enums come from ISFs; flag bits, state codes and limits
from ``sys/proc.h`` and ``sys/param.h`` live here, once, for the readers and
for the forge.
"""

MAXCOMLEN = 19  # sys/param.h: p_comm and td_name are char[MAXCOMLEN + 1]

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
