/*
 * kvm-vol translation core: declarations shared by kvcore.c and the cffi
 * builder (_build_native.py reads this file as its cdef, so the two cannot
 * drift apart).  Only plain C declarations here: cffi parses it.
 *
 * Semantics are those of the pure-Python twin (amd64.py, bitmap.py,
 * formats.Dump.read_phys); every failure is a kv_err whose code and details
 * let the Python side build the very same message the twin raises.
 */

/* Error codes (kv_err.code).  addr is the address the twin's
 * TranslationError names; detail/detail2 are the numbers in its message. */
#define KV_OK 0
#define KV_E_NONCANON 1      /* "non-canonical address" */
#define KV_E_ENTRY 2         /* detail = level 1..5: "pte/pde/pdpe/pml4e/pml5e not valid" */
#define KV_E_PHYS 3          /* detail = page: "physical page X not in <dump>" */
#define KV_E_FILE_END 4      /* detail = file offset where the file ends */
#define KV_E_MD_BEYOND 5     /* "virtual address X not minidumped (beyond the pmap section)" */
#define KV_E_MD_PTPAGE 6     /* detail = page-table page not in the minidump */
#define KV_E_MD_PTTRUNC 7    /* detail = page-table page truncated in the file */
#define KV_E_MD_PHYS 8       /* detail = page: "physical address X not in minidump" */
#define KV_E_MD_DMAP 9       /* "direct map address X not in minidump" */
#define KV_E_MD_NOTDUMPED 10 /* "virtual address X not minidumped" */
#define KV_E_MD_FILE_END 11  /* detail = pa, detail2 = end offset */
#define KV_E_MD_PTE 12       /* "pte not valid" in the minidump rules */
#define KV_E_MD_PDE 13       /* "pde not valid" in the minidump rules */
#define KV_E_ARG 14          /* bad argument (negative length, levels not 4/5) */
#define KV_E_VA32 15         /* "address beyond the 32-bit address space" (i386) */
#define KV_E_A64_DESC 16     /* detail = level 0..3: "l<level> descriptor not valid" (arm64) */
#define KV_E_A64_BLOCK 17    /* detail = level, detail2 = page size: "l1 block descriptor not allowed with 16 KiB pages" */
#define KV_E_A64_NOTABLE 18  /* detail = half (0 TTBR0, 1 TTBR1): "no TTBR0 (user) page table in this address space" */

/* kv_space architectures (kv_space.arch). */
#define KV_ARCH_AMD64 0
#define KV_ARCH_I386 1
#define KV_ARCH_ARM64 2

typedef struct {
    int code;
    uint64_t addr;
    uint64_t detail;
    uint64_t detail2;
} kv_err;

typedef struct kv_phys kv_phys;
typedef struct kv_space kv_space;

/* Physical memory of one dump file.  Open from a path (mmap, or pread when
 * mapping fails) or from a caller-owned buffer (tests, fuzzing), then give
 * it either run table or minidump bitmap. */
kv_phys *kv_phys_open(const char *path, int use_mmap);
kv_phys *kv_phys_from_memory(const uint8_t *data, uint64_t size);
void kv_phys_free(kv_phys *p);
int kv_phys_is_mapped(const kv_phys *p);
uint64_t kv_phys_file_size(const kv_phys *p);
/* runs: 3*n u64 (pa, file offset, length), sorted by pa.  Copied. */
int kv_phys_set_runs(kv_phys *p, const uint64_t *runs, uint64_t n);
/* Minidump bitmap: nbytes of bitmap (caller keeps it alive, not copied);
 * avail: 3*navail u64 (first pfn, end pfn, first bit id) as DumpAvail
 * computes them; pages of data from sparse_off, present of them in the file. */
int kv_phys_set_bitmap(kv_phys *p, const uint8_t *bitmap, uint64_t nbytes, const uint64_t *avail,
                       uint64_t navail, uint64_t sparse_off, uint64_t present);
/* Bytes used by the rank index (super and sub bins). */
uint64_t kv_phys_index_bytes(const kv_phys *p);
/* 1 and *off set if pa is dumped, else 0. */
int kv_phys_lookup(const kv_phys *p, uint64_t pa, uint64_t *off);
int kv_phys_read(const kv_phys *p, uint64_t pa, uint64_t n, uint8_t *dst, int pad, kv_err *err);

/* A virtual address space over a kv_phys: a page walk from root (4 or 5
 * levels) and, with kv_space_set_minidump, libkvm's minidump rules for
 * kernel VA (>= kernbase) and the direct map.  canon48: sign-extend
 * incoming 48-bit addresses (Volatility masks kernel addresses). */
kv_space *kv_space_new(const kv_phys *p, uint64_t root, int levels, int canon48);
void kv_space_free(kv_space *s);
/* pmap: nentries u64, widened and kept once per kv_phys (shared by the spaces given the same entries). */
int kv_space_set_minidump(kv_space *s, int version, uint64_t kernbase, uint64_t dmapbase, uint64_t dmapend,
                          const uint8_t *pmap, uint64_t nentries);
/* i386 (kv_i386.c): the non-PAE 2-level (pae 0) or PAE 3-level walk from
 * root (the page directory, or the 32-byte-aligned PDPT); with
 * kv_space_set_minidump_i386, the minidump's flat PTE array from kernbase
 * (nentries entries of 4 bytes, or 8 with PAE; copied) for va >= kernbase. */
kv_space *kv_space_new_i386(const kv_phys *p, uint64_t root, int pae);
int kv_space_set_minidump_i386(kv_space *s, uint64_t kernbase, const uint8_t *pmap, uint64_t nentries);
/* arm64 (kv_arm64.c): the L0-L3 walk with page_shift 12 (4 KiB granule) or
 * 14 (16 KiB); ttbr0/ttbr1 are the L0 tables of the user and kernel halves
 * (has_ttbr0 0: the kernel's own space, user addresses have no table).
 * kv_space_set_minidump_arm64: libkvm's minidump rules (direct map first,
 * pa = va - dmapbase + dmapphys; then one L3 entry per page from kernbase,
 * nentries u64, copied).  kv_phys_set_page_shift: the page size of a
 * minidump bitmap (default 12). */
kv_space *kv_space_new_arm64(const kv_phys *p, uint64_t ttbr0, int has_ttbr0, uint64_t ttbr1, int page_shift);
int kv_space_set_minidump_arm64(kv_space *s, int version, uint64_t kernbase, uint64_t dmapphys, uint64_t dmapbase,
                                uint64_t dmapend, const uint8_t *pmap, uint64_t nentries);
int kv_phys_set_page_shift(kv_phys *p, int page_shift);
/* 0: *pa and *off of va (valid to the end of its 4 KiB page); -1: err. */
int kv_translate(const kv_space *s, uint64_t va, uint64_t *pa, uint64_t *off, kv_err *err);
/* Copy n bytes at va into dst.  0 on success; -1 with err naming the first
 * failing chunk (no pad) - dst then holds the bytes before it.  pad: failing
 * chunks read as zeros and the call succeeds. */
int kv_read(const kv_space *s, uint64_t va, uint64_t n, uint8_t *dst, int pad, kv_err *err);
/* The hot path, with fewer arguments to convert per call: kv_read into the
 * space's own buffer of KV_SCRATCH bytes (n <= KV_SCRATCH), the error into
 * the space's own kv_err. */
#define KV_SCRATCH 65536
uint8_t *kv_space_scratch(kv_space *s);
kv_err *kv_space_error(kv_space *s);
int kv_read_scratch(kv_space *s, uint64_t va, uint64_t n, int pad);
/* Map [va, va+n) into at most max runs out[4*i] = (va, pa, file offset,
 * length), merged while va, pa and offset stay contiguous.  *done = bytes
 * of the range consumed; call again from va + *done while *done < n.
 * Without ignore_errors, stops at the first invalid page and returns -1
 * (runs before it are in out, their count in *count). */
int kv_map(const kv_space *s, uint64_t va, uint64_t n, int ignore_errors, uint64_t *out, uint64_t max,
           uint64_t *count, uint64_t *done, kv_err *err);
