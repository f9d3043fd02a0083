/*
 * Source of kvm-vol's type packs (symbols/types/freebsd-<release>-<arch>.json.xz).
 *
 * FreeBSD installs the kernel structures that libkvm and libprocstat read
 * (struct proc, thread, ucred, filedesc, file, vnode, vmspace, ...) in its
 * userland headers with exactly the kernel's layout, behind _WANT_* / _KVM_*
 * switches.  Compiling this file with -g against a release's headers (the
 * ziglang wheel bundles them) gives DWARF with the kernel's sizes and offsets
 * for that release; symbols/regenerate.py turns it into a type pack.
 *
 * Two things the userland headers do not give by themselves:
 *
 *  - Kernel-only parameters.  The kernel is built with SMP, so MAXCPU is the
 *    SMP value and cpuset_t has MAXCPU bits (sys/_cpuset.h sets CPU_SETSIZE
 *    to MAXCPU under _KERNEL; userland would use 1024 bits).  That matters on
 *    i386, where MAXCPU is 32 and struct pmap (inside struct vmspace) holds a
 *    cpuset_t.
 *  - Kernel globals.  Their declarations are under _KERNEL, so they are
 *    defined below with the types the kernel sources give them, which puts
 *    each global's type into the DWARF.  Only globals that the kernel of the
 *    target architecture really has are declared; see the notes at each one.
 *
 * Every structure of interest is also a member of struct kvm_vol_types so
 * that it is emitted even when no global uses it.  struct plimit, fileops and
 * cdevsw are defined only under _KERNEL and are therefore not in the packs.
 */

#define	_WANT_UCRED		/* struct ucred */
#define	_WANT_PRISON		/* struct prison */
#define	_WANT_FILE		/* struct file, fileops */
#define	_KVM_VNODE		/* struct vnode */
#define	_WANT_KW_EXITCODE	/* KW_EXITCODE() of sys/wait.h (docs section 4 include set) */
#define	_WANT_MOUNT		/* struct mount */
#define	_WANT_SOCKET		/* struct socket */
#define	_WANT_INPCB		/* struct inpcb */
#define	_WANT_UNPCB		/* struct unpcb */
#define	_WANT_VMMETER		/* struct vmmeter */

#define	SMP			/* GENERIC kernels are SMP: kernel MAXCPU */
#include <machine/param.h>
#define	CPU_SETSIZE	MAXCPU	/* the kernel's cpuset_t (sys/_cpuset.h under _KERNEL) */

#include <stddef.h>
#include <sys/param.h>
#include <sys/types.h>
#include <sys/queue.h>
#include <sys/time.h>
#include <sys/proc.h>
#include <sys/user.h>
#include <sys/ucred.h>
#include <sys/filedesc.h>
#include <sys/file.h>
#include <sys/vnode.h>
#include <sys/mount.h>
#include <sys/conf.h>
#include <sys/msgbuf.h>
#include <sys/kerneldump.h>
#include <sys/sysent.h>
#include <sys/pcpu.h>
#include <sys/resource.h>
#include <sys/resourcevar.h>
#include <sys/signalvar.h>
#include <sys/pipe.h>
#include <sys/socket.h>
#include <sys/socketvar.h>
#include <sys/un.h>
#include <sys/unpcb.h>
#include <sys/_task.h>
#include <sys/jail.h>
#include <sys/tty.h>
#include <sys/vmmeter.h>
#include <sys/mbuf.h>
#include <sys/buf.h>
#include <sys/lockf.h>
#include <sys/loginclass.h>
#include <netinet/in.h>
#include <netinet/in_pcb.h>
#include <vm/vm.h>
#include <vm/pmap.h>
#include <vm/vm_map.h>
#include <vm/vm_object.h>
#include <vm/vm_page.h>
#include <vm/swap_pager.h>
#include <machine/minidump.h>
#include <machine/pcb.h>
#include <machine/frame.h>

/* Structures of interest that no kernel global below would emit. */
struct kvm_vol_types {
	struct kinfo_proc	kinfo_proc;
	struct thread		thread;
	struct ucred		ucred;
	struct pargs		pargs;
	struct session		session;
	struct pgrp		pgrp;
	struct sigacts		sigacts;
	struct pstats		pstats;
	struct filedesc		filedesc;
	struct filedescent	filedescent;
	struct fdescenttbl	fdescenttbl;
	struct filedesc_to_leader filedesc_to_leader;
	struct pwddesc		pwddesc;
	struct pwd		pwd;
	struct file		file;
	struct vnode		vnode;
	struct mount		mount;
	struct cdev		cdev;
	struct pipe		pipe;
	struct pipepair		pipepair;
	struct socket		socket;
	struct unpcb		unpcb;
	struct inpcb		inpcb;
	struct vm_map		vm_map;
	struct vm_map_entry	vm_map_entry;
	struct vm_object	vm_object;
	struct vm_page		vm_page;
	struct swdevt		swdevt;
	struct sysentvec	sysentvec;
	struct kerneldumpheader	kerneldumpheader;
	struct minidumphdr	minidumphdr;
	struct xucred		xucred;
	struct kinfo_file	kinfo_file;
	struct kinfo_vmentry	kinfo_vmentry;
	struct mbuf		mbuf;
	struct lockf		lockf;
	struct loginclass	loginclass;
	struct trapframe	trapframe;
	/* These end in flexible arrays, so they are named through pointers. */
	struct tty		*tty;
	struct buf		*buf;
} kvm_vol_types;

/*
 * Kernel globals.  Each comment names where the kernel declares the global
 * (the _KERNEL part of an installed header) or, for file-local ones, defines
 * it.
 */

/* sys/proc.h (defined in sys/kern/kern_proc.c); the list heads are _KERNEL-only. */
LIST_HEAD(proclist, proc) allproc;
LIST_HEAD(pidhashhead, proc) *pidhashtbl;
u_long pidhash;
/* sys/kern/kern_proc.c: offsets for debuggers (FreeBSD >= 10.3; p_hash since 13.0). */
const int proc_off_p_pid = offsetof(struct proc, p_pid);
const int proc_off_p_comm = offsetof(struct proc, p_comm);
const int proc_off_p_list = offsetof(struct proc, p_list);
const int proc_off_p_hash = offsetof(struct proc, p_hash);
const int proc_off_p_threads = offsetof(struct proc, p_threads);
const int thread_off_td_tid = offsetof(struct thread, td_tid);
const int thread_off_td_name = offsetof(struct thread, td_name);
const int thread_off_td_oncpu = offsetof(struct thread, td_oncpu);
const int thread_off_td_pcb = offsetof(struct thread, td_pcb);
const int thread_off_td_plist = offsetof(struct thread, td_plist);

/* sys/proc.h (sys/kern/init_main.c): thread0 is a macro for thread0_st.t0st_thread. */
struct proc proc0;
struct thread0_storage thread0_st;
struct vmspace vmspace0;
int nprocs;
int maxproc;

/* sys/kernel.h: 15.0 counts ticks in a long; ticks is its low half. */
int hz;
volatile int ticks;
#if __FreeBSD_version >= 1500000
volatile long ticksl;
#endif

/*
 * sys/time.h.  There is no boottime global: sys/kern/kern_tc.c keeps the
 * boot time in its private struct timehands (th_boottime, a struct
 * bintime); time_second - time_uptime gives it to the second.
 */
volatile time_t time_second;
volatile time_t time_uptime;

/* sys/resource.h, sys/msgbuf.h */
struct loadavg averunnable;
struct msgbuf *msgbufp;

/* sys/vm/swap_pager.c: static (file-local) but in the kernel's symbol table. */
TAILQ_HEAD(, swdevt) swtailq;
int nswapdev;

/* sys/vmmeter.h, vm/pmap.h, sys/jail.h, sys/vnode.h, sys/systm.h */
struct vmmeter vm_cnt;
vm_offset_t kernel_vm_end;
struct prison prison0;
struct vnode *rootvnode;
long physmem;

/* sys/smp.h, sys/pcpu.h; MAXCPU-sized arrays in subr_pcpu.c */
u_int mp_maxid;
int mp_ncpus;
int mp_maxcpus;
volatile cpuset_t stopped_cpus;
struct pcpu *cpuid_to_pcpu[MAXCPU];
uintptr_t dpcpu_off[MAXCPU];

/* sys/conf.h (sys/kern/kern_shutdown.c) */
lwpid_t dumptid;
struct pcb dumppcb;

/* machine/pmap.h */
struct pmap kernel_pmap_store;

/*
 * sys/conf/newvers.sh writes vers.c: version[] and sccs[] are at least 256
 * and 128 bytes, osrelease[] at least 32, ostype[] is "FreeBSD".
 */
char version[256];
char sccs[128];
char ostype[8];
char osrelease[32];
int osreldate;

#if defined(__amd64__)
u_int64_t KPML4phys;		/* machine/pmap.h */
vm_paddr_t dmaplimit;		/* machine/pmap.h */
vm_paddr_t kernphys;		/* machine/md_var.h */
struct pcpu *__pcpu;		/* machine/pcpu_aux.h: the pcpu array, allocated at boot */
#elif defined(__i386__)
/*
 * machine/pmap.h, pmap_pae.h, pmap_nopae.h: one kernel carries both the PAE
 * and the non-PAE pmap, whose pd_entry_t differ, so the types are spelled out.
 */
int pae_mode;
uint64_t *IdlePDPT;
uint64_t *IdlePTD_pae;
uint32_t *IdlePTD_nopae;
struct pcpu __pcpu[MAXCPU];	/* machine/pcpu_aux.h */
#endif

/*
 * Open files, swap (issue 5).  struct blist (sys/blist.h) is what sw_blist
 * points to; struct protosw and struct domain (sys/protosw.h, sys/domain.h)
 * are what a socket's so_proto leads to.  All three are in installed headers
 * outside _KERNEL.
 */
#define	_WANT_PROTOSW		/* 15.0 hides struct protosw behind it */
#include <sys/blist.h>
#include <sys/protosw.h>
#include <sys/domain.h>

/*
 * struct namecache is private to sys/kern/vfs_cache.c, so no header has it.
 * Declared here with the kernel's layout (identical in 13.x, 14.x and 15.0):
 * nc_hash is a CK_SLIST_ENTRY, i.e. one pointer (ck_queue.h is kernel-only).
 * nc_name[] is the flexible name; entries come from the small or large
 * (NAME_MAX) namecache zones, with the _ts variants in front when the file
 * system supplies timestamps (NCF_TS), which does not move these fields.
 * These four structures need no helper member: swdevt.sw_blist,
 * socket.so_proto, protosw.pr_domain and vnode.v_cache_dst point to them, so
 * DWARF carries them once they are complete here.
 */
struct negstate {
	u_char	neg_flag;
	u_char	neg_hit;
};
struct namecache {
	LIST_ENTRY(namecache)	nc_src;		/* source vnode list */
	TAILQ_ENTRY(namecache)	nc_dst;		/* destination vnode list */
	struct { struct namecache *csle_next; } nc_hash;	/* CK_SLIST_ENTRY */
	struct vnode		*nc_dvp;	/* vnode of parent of name */
	union {
		struct vnode	*nu_vp;		/* vnode the name refers to */
		struct negstate	nu_neg;		/* negative entry state */
	} n_un;
	u_char			nc_flag;	/* NCF_* */
	u_char			nc_nlen;	/* length of name */
	char			nc_name[];	/* segment name + nul */
};

/*
 * Processes: arguments, environment, controlling terminals (issue 4).
 * struct ps_strings (sys/exec.h) is what a process's user stack holds at
 * PROC_PS_STRINGS(p); struct cdev_priv (fs/devfs/devfs_int.h, outside
 * _KERNEL) wraps every struct cdev and holds cdp_inode, the dev_t that
 * tty_udev() / dev2udev() report as ki_tdev.  struct freebsd32_ps_strings is
 * in sys/compat/freebsd32/freebsd32_util.h, which is not installed; it is
 * declared here with the kernel's layout (unchanged since FreeBSD 7).
 * They are members of kvm_vol_types_procs, which regenerate.py drops like
 * kvm_vol_types.
 */
#include <sys/exec.h>
#include <fs/devfs/devfs_int.h>

struct freebsd32_ps_strings {
	uint32_t ps_argvstr;	/* first of 0 or more argument strings */
	int	ps_nargvstr;	/* the number of argument strings */
	uint32_t ps_envstr;	/* first of 0 or more environment strings */
	int	ps_nenvstr;	/* the number of environment strings */
};

struct kvm_vol_types_procs {
	struct ps_strings		ps_strings;
	struct freebsd32_ps_strings	freebsd32_ps_strings;
	struct cdev_priv		cdev_priv;
} kvm_vol_types_procs;

/*
 * Open files, more of them (issue 5): POSIX shared memory (struct shmfd,
 * sys/mman.h) and named semaphores (struct ksem, sys/ksem.h) are what
 * f_data points to for DTYPE_SHM and DTYPE_SEM; both headers show them to
 * userland under _WANT_FILE (defined above), as libprocstat's kvm mode reads
 * them.  They are members of kvm_vol_types_files, which regenerate.py drops
 * like kvm_vol_types.
 */
#include <sys/mman.h>
#include <sys/ksem.h>

/*
 * A traced process has no p_tracevp any more (kern_ktrace.c, 2021; 14.x and
 * 15.0): p_ktrioparms points to a struct ktr_io_params, private to
 * sys/kern/kern_ktrace.c, whose vp is the trace file (ktr_get_tracevp()).
 * Declared with the kernel's layout (the same in 14.x and 15.0); completing
 * it here is enough, since struct proc points to it.
 */
struct ktr_io_params {
	struct vnode	*vp;
	struct ucred	*cr;
	off_t		lim;
	u_int		refs;
};

struct kvm_vol_types_files {
	struct shmfd	shmfd;
	struct ksem	ksem;
} kvm_vol_types_files;
