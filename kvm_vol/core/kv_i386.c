/*
 * kvm-vol translation core: FreeBSD/i386, the C twin of kvm_vol/core/i386.py.
 *
 * Two pmaps live in every i386 kernel since FreeBSD 12 and pae_mode picks
 * one: non-PAE (2 levels, 4-byte entries, 4 MiB superpages) and PAE (a
 * 4-entry PDPT, 8-byte entries, 2 MiB superpages).  A minidump replaces the
 * walk for kernel VA (va >= kernbase) by its flat PTE array; there is no
 * direct map.  Same rules and error cases as the twin, checked against it by
 * tests/test_core_i386.py; every access is bounds-checked (hostile input).
 */
#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"

/* sys/i386/include/pmap.h */
#define I386_PG_V 0x001ULL
#define I386_PG_PS 0x080ULL
#define PG_FRAME_PAE 0x000FFFFFFFFFF000ULL
#define PG_PS_FRAME_PAE 0x000FFFFFFFE00000ULL
#define PDRSHIFT_PAE 21
#define PG_FRAME_NOPAE 0xFFFFF000ULL
#define PG_PS_FRAME_NOPAE 0xFFC00000ULL
#define PDRSHIFT_NOPAE 22
/* PDPT: 4 entries of 1 GiB, 32-byte aligned in CR3 */
#define PDPTSHIFT 30
#define PDPT_ALIGN 32ULL
#define VA_LIMIT (1ULL << 32)

#define IS_PAE(s) ((s)->levels == 3)

kv_space *kv_space_new_i386(const kv_phys *p, uint64_t root, int pae)
{
    return kv_space_alloc(p, root, KV_ARCH_I386, pae ? 3 : 2);
}

int kv_space_set_minidump_i386(kv_space *s, uint64_t kernbase, const uint8_t *pmap, uint64_t nentries)
{
    /* md_version 0: unused, the i386 pmap section has one layout */
    if (s->arch != KV_ARCH_I386 || kv_space_set_pmap(s, 0, kernbase, pmap, nentries, IS_PAE(s) ? 8 : 4))
        return -1;
    s->dmapbase = s->dmapend = 0; /* no direct map */
    return 0;
}

/* One entry of size bytes at physical address epa; on failure *e names va
 * and *skip = covered (the VA span the table page maps). */
static int read_entry(const kv_space *s, uint64_t epa, int size, uint64_t va, uint64_t covered, uint64_t *entry,
                      uint64_t *skip, kv_err *e)
{
    kv_err pe;
    *entry = 0;
    if (kv_phys_read(s->phys, epa, (uint64_t)size, (uint8_t *)entry, 0, &pe) != 0) {
        *skip = covered;
        kv_set_err(e, pe.code, va, pe.detail, 0);
        return -1;
    }
    return 0;
}

int kv_i386_translate(const kv_space *s, uint64_t va, uint64_t *pa, uint64_t *off, uint64_t *avail,
                      uint64_t *skip, kv_err *e)
{
    const kv_phys *p = s->phys;
    const int pae = IS_PAE(s);
    const uint64_t frame = pae ? PG_FRAME_PAE : PG_FRAME_NOPAE;
    uint64_t page_left = PAGE_SIZE - (va & PAGE_MASK), a;
    *skip = PAGE_SIZE;
    if (va >= VA_LIMIT) {
        *skip = 0;
        kv_set_err(e, KV_E_VA32, va, 0, 0);
        return -1;
    }
    if (s->md && va >= s->kernbase) {
        /* MinidumpI386Translator.kvatop */
        uint64_t index = (va - s->kernbase) >> PAGE_SHIFT;
        if (index >= s->pmap_entries) {
            *skip = 0;
            kv_set_err(e, KV_E_MD_BEYOND, va, 0, 0);
            return -1;
        }
        uint64_t pte = s->pmap[index];
        if (!(pte & I386_PG_V)) {
            kv_set_err(e, KV_E_MD_PTE, va, 0, 0);
            return -1;
        }
        uint64_t page = pte & frame, o;
        if (!kv_phys_find(p, page, &o, &a)) {
            kv_set_err(e, KV_E_MD_PHYS, va, page, 0);
            return -1;
        }
        *pa = page + (va & PAGE_MASK);
        *off = o + (va & PAGE_MASK);
        *avail = page_left;
        return 0;
    }
    /* walk() in i386.py */
    const int size = pae ? 8 : 4;
    const int pdrshift = pae ? PDRSHIFT_PAE : PDRSHIFT_NOPAE;
    const uint64_t nbpdr = 1ULL << pdrshift, nptepg = PAGE_SIZE / (uint64_t)size;
    uint64_t pd, pdi, entry;
    if (pae) {
        uint64_t pdpt = s->root & ~(PDPT_ALIGN - 1);
        if (read_entry(s, pdpt + (va >> PDPTSHIFT) * 8, 8, va, 0, &entry, skip, e) != 0)
            return -1;
        if (!(entry & I386_PG_V)) {
            *skip = 1ULL << PDPTSHIFT;
            kv_set_err(e, KV_E_ENTRY, va, 3, 0);
            return -1;
        }
        pd = entry & frame;
        pdi = (va >> pdrshift) & (nptepg - 1);
    } else {
        pd = s->root & frame;
        pdi = va >> pdrshift;
    }
    if (read_entry(s, pd + pdi * (uint64_t)size, size, va, pae ? 1ULL << PDPTSHIFT : 0, &entry, skip, e) != 0)
        return -1;
    if (!(entry & I386_PG_V)) {
        *skip = nbpdr;
        kv_set_err(e, KV_E_ENTRY, va, 2, 0);
        return -1;
    }
    uint64_t leaf_left = page_left;
    if (entry & I386_PG_PS) {
        *pa = (entry & (pae ? PG_PS_FRAME_PAE : PG_PS_FRAME_NOPAE)) | (va & (nbpdr - 1));
        leaf_left = nbpdr - (va & (nbpdr - 1));
    } else {
        uint64_t pt = entry & frame;
        if (read_entry(s, pt + ((va >> PAGE_SHIFT) & (nptepg - 1)) * (uint64_t)size, size, va, nbpdr, &entry, skip,
                       e) != 0)
            return -1;
        if (!(entry & I386_PG_V)) {
            kv_set_err(e, KV_E_ENTRY, va, 1, 0);
            return -1;
        }
        *pa = (entry & frame) | (va & PAGE_MASK);
    }
    if (!kv_phys_find(p, *pa, off, &a)) {
        kv_set_err(e, KV_E_PHYS, va, *pa & ~PAGE_MASK, 0);
        return -1;
    }
    /* contiguous in VA, PA and file: to the end of the leaf and of the run */
    *avail = a < leaf_left ? a : leaf_left;
    return 0;
}
