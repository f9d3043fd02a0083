/*
 * kvm-vol translation core: FreeBSD/arm64 (AArch64).
 *
 * The C twin of kvm_vol/core/arm64.py (Arm64Space, walk,
 * MinidumpArm64Translator): the L0-L3 walk with the 4 KiB or the 16 KiB
 * granule from two roots (TTBR0 for the user half, TTBR1 for the kernel
 * half), and libkvm's minidump rules (direct map first, then one L3 entry
 * per page from kernbase) without libkvm's bugs.  Same errors, same bytes;
 * tests/test_core_arm64.py compares the two.  Constants are FreeBSD's
 * (sys/arm64/include/pte.h, vmparam.h); their single Python definition is
 * arm64.py, and the test compares these against it.
 */
#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"

#define A64_ATTR_MASK 0xFFFC000000000FFFULL /* ATTR_MASK_H | ATTR_MASK_L */
#define A64_BASE_MASK (~A64_ATTR_MASK)      /* PTE_TO_PHYS */
#define A64_DESCR_MASK 3ULL                 /* ATTR_DESCR_MASK */
#define A64_TABLE 3ULL                      /* L0_TABLE == L1_TABLE == L2_TABLE */
#define A64_BLOCK 1ULL                      /* L1_BLOCK == L2_BLOCK */
#define A64_L3_PAGE 3ULL
#define A64_VA_BITS 48
#define A64_USER_END (1ULL << A64_VA_BITS)  /* VM_MAX_USER_ADDRESS */
#define A64_TTBR1_BASE 0xFFFF000000000000ULL

/* Ln_SHIFT of a level for a granule (page_shift 12 or 14), and entries. */
static int level_shift(int page_shift, int level)
{
    int bits = page_shift - 3; /* 9 or 11 index bits per table page */
    return page_shift + bits * (3 - level);
}

static uint64_t level_entries(int page_shift, int level)
{
    if (level == 0) /* 48-bit VA: what is left above L1 */
        return 1ULL << (A64_VA_BITS - level_shift(page_shift, 0));
    return 1ULL << (page_shift - 3);
}

/* Largest power of two p with va's p-aligned block ending at or before
 * next (kv_map steps to the end of that block); 0 when next is 2**64. */
static uint64_t skip_to(uint64_t va, uint64_t next, int none)
{
    if (none)
        return 0;
    uint64_t p = 1ULL << 63;
    while (p > 1) {
        uint64_t end = (va | (p - 1)) + 1; /* 0 on overflow */
        if (end != 0 && end <= next)
            break;
        p >>= 1;
    }
    return p;
}

/* The end of va's size-aligned block, as skip_to expects it. */
static uint64_t skip_after(uint64_t va, uint64_t size)
{
    uint64_t end = (va | (size - 1)) + 1;
    return skip_to(va, end, end == 0);
}

kv_space *kv_space_new_arm64(const kv_phys *p, uint64_t ttbr0, int has_ttbr0, uint64_t ttbr1, int page_shift)
{
    if (page_shift != 12 && page_shift != 14)
        return NULL;
    kv_space *s = kv_space_alloc(p, ttbr0, KV_ARCH_ARM64, 4);
    if (!s)
        return NULL;
    s->has_root0 = has_ttbr0 ? 1 : 0;
    s->root1 = ttbr1;
    s->page_shift = page_shift;
    return s;
}

int kv_space_set_minidump_arm64(kv_space *s, int version, uint64_t kernbase, uint64_t dmapphys, uint64_t dmapbase,
                                uint64_t dmapend, const uint8_t *pmap, uint64_t nentries)
{
    if (s->arch != KV_ARCH_ARM64 || version < 1 || version > 3 ||
        kv_space_set_pmap(s, version, kernbase, pmap, nentries, 8))
        return -1;
    s->dmapphys = dmapphys;
    s->dmapbase = dmapbase;
    s->dmapend = dmapend;
    return 0;
}

int kv_arm64_is_md(const kv_space *s, uint64_t va)
{
    return s->md && ((s->dmapbase <= va && va < s->dmapend) || va >= s->kernbase);
}

/* MinidumpArm64Translator.kvatop */
static int md_translate(const kv_space *s, uint64_t va, uint64_t *pa, uint64_t *off, uint64_t *avail,
                        uint64_t *skip, kv_err *e)
{
    uint64_t ps = 1ULL << s->page_shift, offset = va & (ps - 1), page, o, a;
    int missing;
    if (s->dmapbase <= va && va < s->dmapend) {
        page = (va - s->dmapbase + s->dmapphys) & ~(ps - 1);
        missing = KV_E_MD_DMAP;
    } else {
        uint64_t index = (va - s->kernbase) >> s->page_shift;
        if (index >= s->pmap_entries) {
            *skip = va < s->dmapbase ? skip_to(va, s->dmapbase, 0) : 0;
            kv_set_err(e, KV_E_MD_BEYOND, va, 0, 0);
            return -1;
        }
        uint64_t l3 = s->pmap[index];
        if ((l3 & A64_DESCR_MASK) != A64_L3_PAGE) {
            *skip = skip_after(va, ps);
            kv_set_err(e, KV_E_MD_PTE, va, 0, 0);
            return -1;
        }
        page = l3 & A64_BASE_MASK & ~(ps - 1);
        missing = KV_E_MD_PHYS;
    }
    if (!kv_phys_find(s->phys, page, &o, &a)) {
        *skip = skip_after(va, ps);
        kv_set_err(e, missing, va, page, 0);
        return -1;
    }
    *pa = page + offset;
    *off = o + offset;
    *avail = PAGE_SIZE - (va & PAGE_MASK);
    return 0;
}

int kv_arm64_translate(const kv_space *s, uint64_t va, uint64_t *pa, uint64_t *off, uint64_t *avail,
                       uint64_t *skip, kv_err *e)
{
    const kv_phys *p = s->phys;
    *skip = PAGE_SIZE;
    if (kv_arm64_is_md(s, va))
        return md_translate(s, va, pa, off, avail, skip, e);
    /* walk() in arm64.py */
    uint64_t top = va >> A64_VA_BITS;
    int half;
    if (top == 0)
        half = 0;
    else if (top == 0xFFFF)
        half = 1;
    else {
        *skip = skip_to(va, A64_TTBR1_BASE, va >= A64_TTBR1_BASE);
        kv_set_err(e, KV_E_NONCANON, va, 0, 0);
        return -1;
    }
    if (half == 0 && !s->has_root0) {
        *skip = skip_to(va, A64_USER_END, 0);
        kv_set_err(e, KV_E_A64_NOTABLE, va, 0, 0);
        return -1;
    }
    int ps_shift = s->page_shift;
    uint64_t ps = 1ULL << ps_shift;
    uint64_t table = (half ? s->root1 : s->root) & A64_BASE_MASK & ~(ps - 1);
    uint64_t leaf = 0, leaf_size = 0;
    for (int level = 0; level <= 3; level++) {
        int shift = level_shift(ps_shift, level);
        uint64_t epa = table + ((va >> shift) & (level_entries(ps_shift, level) - 1)) * 8, entry = 0;
        kv_err pe;
        if (kv_phys_read(p, epa, 8, (uint8_t *)&entry, 0, &pe) != 0) {
            if (level == 0)
                *skip = half ? 0 : skip_to(va, A64_USER_END, 0);
            else
                *skip = skip_after(va, 1ULL << level_shift(ps_shift, level - 1));
            kv_set_err(e, pe.code, va, pe.detail, 0);
            return -1;
        }
        uint64_t kind = entry & A64_DESCR_MASK;
        if (level == 3) {
            if (kind != A64_L3_PAGE) {
                *skip = skip_after(va, 1ULL << shift);
                kv_set_err(e, KV_E_A64_DESC, va, 3, 0);
                return -1;
            }
            leaf = entry & A64_BASE_MASK & ~((1ULL << shift) - 1);
            leaf_size = 1ULL << shift;
            break;
        }
        if (kind == A64_BLOCK && (level == 1 || level == 2)) {
            if (level == 1 && ps_shift != 12) {
                *skip = skip_after(va, 1ULL << shift);
                kv_set_err(e, KV_E_A64_BLOCK, va, 1, ps);
                return -1;
            }
            leaf = entry & A64_BASE_MASK & ~((1ULL << shift) - 1);
            leaf_size = 1ULL << shift;
            break;
        }
        if (kind != A64_TABLE) {
            *skip = skip_after(va, 1ULL << shift);
            kv_set_err(e, KV_E_A64_DESC, va, (uint64_t)level, 0);
            return -1;
        }
        table = entry & A64_BASE_MASK & ~(ps - 1);
    }
    uint64_t a, in_leaf = va & (leaf_size - 1);
    *pa = leaf | in_leaf;
    if (!kv_phys_find(p, *pa, off, &a)) {
        *skip = PAGE_SIZE;
        kv_set_err(e, KV_E_PHYS, va, *pa & ~PAGE_MASK, 0);
        return -1;
    }
    uint64_t leaf_left = leaf_size - in_leaf;
    *avail = a < leaf_left ? a : leaf_left;
    return 0;
}
