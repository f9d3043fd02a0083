/*
 * kvm-vol translation core: what kvcore.c shares with the per-architecture
 * translation files (kv_i386.c, ...).  Not part of the cffi cdef (kvcore.h
 * is): the structures stay opaque to Python.
 *
 * kvcore.c owns the dump file, the physical index and the generic read and
 * map loops; an architecture file owns only its translate function, which
 * kvcore.c's translate() dispatches to by kv_space.arch.
 */
#ifndef KV_INTERNAL_H
#define KV_INTERNAL_H

#include <stdint.h>

#include "kvcore.h"

#define PAGE_SHIFT 12
#define PAGE_SIZE (1ULL << PAGE_SHIFT)
#define PAGE_MASK (PAGE_SIZE - 1)

struct kv_phys {
    int fd;
    const uint8_t *data; /* whole file mapped (or caller memory), or NULL: pread */
    uint64_t size;
    int mapped; /* data came from our mmap() */
    int kind;
    /* runs */
    uint64_t *runs;
    uint64_t nruns;
    /* bitmap */
    const uint8_t *bitmap;
    uint64_t nbytes, nbits;
    uint64_t *super;
    uint16_t *sub;
    uint64_t nsuper, nsub;
    uint64_t *avail; /* first pfn, end pfn, first bit */
    uint64_t navail;
    uint64_t sparse_off, present;
    int page_shift; /* bitmap pages: 0 means PAGE_SHIFT; 14 for 16 KiB arm64 minidumps */
    /* The minidump pmap section, widened to u64 once per dump and shared by
     * every space over it (a process layer each: 8 MiB per copy on amd64). */
    uint64_t *pmap;
    uint64_t pmap_entries;
};

struct kv_space {
    const kv_phys *phys;
    uint64_t root;
    int arch;   /* KV_ARCH_* */
    int levels; /* amd64: 4 or 5; i386: 2 (non-PAE) or 3 (PAE) */
    int canon48;
    int md;
    int md_version;
    uint64_t kernbase, dmapbase, dmapend;
    const uint64_t *pmap; /* minidump pmap entries, widened to u64: the phys's, or own_pmap */
    uint64_t pmap_entries;
    uint64_t *own_pmap;   /* set when this space's pmap differs from the one its phys shares */
    kv_err err;
    uint8_t *scratch; /* KV_SCRATCH bytes */
    /* arm64: root is TTBR0's L0 table (valid if has_root0), root1 TTBR1's;
     * page_shift the granule (12 or 14); dmapphys the minidump's. */
    uint64_t root1;
    int has_root0;
    int page_shift;
    uint64_t dmapphys;
};

/* kvcore.c */
void kv_set_err(kv_err *e, int code, uint64_t addr, uint64_t detail, uint64_t detail2);
/* File offset of pa and the bytes contiguous from there in the file; 0 if not dumped. */
int kv_phys_find(const kv_phys *p, uint64_t pa, uint64_t *off, uint64_t *avail);
/* Copy up to n bytes at file offset off; returns how many (short at EOF). */
uint64_t kv_file_copy(const kv_phys *p, uint64_t off, uint64_t n, uint8_t *dst);
/* A new space with its scratch buffer; arch, levels and root set, nothing else. */
kv_space *kv_space_alloc(const kv_phys *p, uint64_t root, int arch, int levels);
/* What every kv_space_set_minidump* shares: the pmap section, nentries
 * entries of width 4 or 8 bytes, widened to u64; md set with version and
 * kernbase.  The widened table is kept once by the space's kv_phys and
 * shared by every later space given the same entries (one space per
 * process layer); different entries get a copy of the space's own.  0, or
 * -1 (too many entries, no memory) with s unchanged; the caller sets its
 * architecture's direct-map fields. */
int kv_space_set_pmap(kv_space *s, int version, uint64_t kernbase, const uint8_t *pmap, uint64_t nentries,
                      int width);

/* Per-architecture translation, same contract as kvcore.c's translate():
 * 0 with *pa, *off and *avail (bytes usable from there, never past the
 * 4 KiB page for minidump rules), or -1 with *e set and *skip the size of
 * the aligned VA block known to fail the same way (0: everything above). */
int kv_arm64_translate(const kv_space *s, uint64_t va, uint64_t *pa, uint64_t *off, uint64_t *avail,
                       uint64_t *skip, kv_err *e);
/* Whether arm64 va is read by the minidump rules (straight from the file). */
int kv_arm64_is_md(const kv_space *s, uint64_t va);
int kv_i386_translate(const kv_space *s, uint64_t va, uint64_t *pa, uint64_t *off, uint64_t *avail,
                      uint64_t *skip, kv_err *e);

#endif
