/*
 * kvm-vol translation core in C (bound by cffi as kvm_vol.core._native).
 *
 * The C twin of kvm_vol/core/amd64.py, bitmap.py and formats.Dump.read_phys:
 * same rules, same error cases (kvcore.h lists them), checked against each
 * other by tests/test_core_native.py.  The input is hostile (a dump file
 * anybody can craft), so every access to the file, the bitmap, the pmap
 * section and the run table is bounds-checked, and every loop is bounded by
 * the length the caller asked for.
 *
 * Per-architecture translation lives in kv_<arch>.c (kv_i386.c: the i386
 * walks and minidump), reached from translate() by kv_space.arch; the
 * structures they share are in kv_internal.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv_internal.h"

#define PDRSHIFT 21
#define NBPDR (1ULL << PDRSHIFT)
#define PDRMASK (NBPDR - 1)
#define PG_V 0x001ULL
#define PG_PS 0x080ULL
#define PG_FRAME 0x000FFFFFFFFFF000ULL
#define PG_PS_FRAME 0x000FFFFFFFE00000ULL
#define PG_PS_PDP_FRAME 0x000FFFFFC0000000ULL

/* Rank index: a u64 count every SUPER_BITS bits, and a u16 count (relative
 * to its super bin) every SUB_BITS bits.  Memory: bitmap/128 + bitmap/1024,
 * a lookup popcounts at most SUB_BITS/8 = 256 bytes. */
#define SUPER_SHIFT 16
#define SUB_SHIFT 11

enum { PHYS_NONE = 0, PHYS_RUNS = 1, PHYS_BITMAP = 2 };

/* struct kv_phys and struct kv_space: kv_internal.h (shared with the architecture files) */

static void set_err(kv_err *e, int code, uint64_t addr, uint64_t detail, uint64_t detail2)
{
    if (e) {
        e->code = code;
        e->addr = addr;
        e->detail = detail;
        e->detail2 = detail2;
    }
}

/* ------------------------------------------------------------------ file */

kv_phys *kv_phys_open(const char *path, int use_mmap)
{
    struct stat st;
    kv_phys *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (p->fd < 0) {
        free(p);
        return NULL;
    }
    if (fstat(p->fd, &st) != 0) {
        close(p->fd);
        free(p);
        return NULL;
    }
    off_t end = lseek(p->fd, 0, SEEK_END); /* right for block devices too */
    p->size = end > 0 ? (uint64_t)end : 0;
    if (use_mmap && p->size > 0 && (uint64_t)(size_t)p->size == p->size) {
        void *m = mmap(NULL, (size_t)p->size, PROT_READ, MAP_SHARED, p->fd, 0);
        if (m != MAP_FAILED) {
            p->data = m;
            p->mapped = 1;
        }
    }
    return p;
}

kv_phys *kv_phys_from_memory(const uint8_t *data, uint64_t size)
{
    kv_phys *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->fd = -1;
    p->data = data;
    p->size = data ? size : 0;
    return p;
}

void kv_phys_free(kv_phys *p)
{
    if (!p)
        return;
    if (p->mapped)
        munmap((void *)p->data, (size_t)p->size);
    if (p->fd >= 0)
        close(p->fd);
    free(p->runs);
    free(p->super);
    free(p->sub);
    free(p->avail);
    free(p->pmap);
    free(p);
}

int kv_phys_is_mapped(const kv_phys *p) { return p->data != NULL; }
uint64_t kv_phys_file_size(const kv_phys *p) { return p->size; }

/* Copy up to n bytes at file offset off; returns how many (short at EOF). */
static uint64_t file_copy(const kv_phys *p, uint64_t off, uint64_t n, uint8_t *dst)
{
    if (off >= p->size)
        return 0;
    if (n > p->size - off)
        n = p->size - off;
    if (p->data) {
        memcpy(dst, p->data + off, (size_t)n);
        return n;
    }
    uint64_t got = 0;
    while (got < n) {
        ssize_t r = pread(p->fd, dst + got, (size_t)(n - got), (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (uint64_t)r;
    }
    return got;
}

/* ------------------------------------------------------------------ runs */

int kv_phys_set_runs(kv_phys *p, const uint64_t *runs, uint64_t n)
{
    uint64_t *copy = NULL;
    if (n) {
        if (n > UINT64_MAX / 24 || !(copy = malloc((size_t)(n * 24))))
            return -1;
        memcpy(copy, runs, (size_t)(n * 24));
    }
    free(p->runs);
    p->runs = copy;
    p->nruns = n;
    p->kind = PHYS_RUNS;
    return 0;
}

/* ---------------------------------------------------------------- bitmap */

static inline uint64_t popcount64(uint64_t x) { return (uint64_t)__builtin_popcountll(x); }

int kv_phys_set_bitmap(kv_phys *p, const uint8_t *bitmap, uint64_t nbytes, const uint64_t *avail,
                       uint64_t navail, uint64_t sparse_off, uint64_t present)
{
    if (nbytes > (UINT64_MAX >> 4) || navail > UINT64_MAX / 24)
        return -1;
    uint64_t nbits = nbytes * 8;
    uint64_t nsuper = (nbits >> SUPER_SHIFT) + 1, nsub = (nbits >> SUB_SHIFT) + 1;
    uint64_t *super = malloc((size_t)(nsuper * 8));
    uint16_t *sub = malloc((size_t)(nsub * 2));
    uint64_t *av = navail ? malloc((size_t)(navail * 24)) : NULL;
    if (!super || !sub || (navail && !av)) {
        free(super);
        free(sub);
        free(av);
        return -1;
    }
    if (navail)
        memcpy(av, avail, (size_t)(navail * 24));
    /* One pass: the count before every sub bin, relative to its super bin. */
    uint64_t total = 0, super_base = 0;
    const uint64_t sub_bytes = 1ULL << (SUB_SHIFT - 3);
    for (uint64_t s = 0; s < nsub; s++) {
        uint64_t bit = s << SUB_SHIFT;
        if ((bit & ((1ULL << SUPER_SHIFT) - 1)) == 0) {
            super[bit >> SUPER_SHIFT] = total;
            super_base = total;
        }
        sub[s] = (uint16_t)(total - super_base);
        uint64_t start = s * sub_bytes, end = start + sub_bytes;
        if (end > nbytes)
            end = nbytes;
        uint64_t i = start;
        for (; i + 8 <= end; i += 8) {
            uint64_t w;
            memcpy(&w, bitmap + i, 8);
            total += popcount64(w);
        }
        for (; i < end; i++)
            total += popcount64(bitmap[i]);
    }
    free(p->super);
    free(p->sub);
    free(p->avail);
    p->bitmap = bitmap;
    p->nbytes = nbytes;
    p->nbits = nbits;
    p->super = super;
    p->sub = sub;
    p->nsuper = nsuper;
    p->nsub = nsub;
    p->avail = av;
    p->navail = navail;
    p->sparse_off = sparse_off;
    p->present = present;
    p->kind = PHYS_BITMAP;
    return 0;
}

uint64_t kv_phys_index_bytes(const kv_phys *p)
{
    return p->kind == PHYS_BITMAP ? p->nsuper * 8 + p->nsub * 2 : 0;
}

/* Set bits before bit (bit < nbits).  Built twice on x86-64: with the
 * POPCNT instruction (chosen at run time when the CPU has it) and without. */
#define RANK_BODY                                                              \
    uint64_t s = bit >> SUB_SHIFT;                                             \
    uint64_t r = p->super[bit >> SUPER_SHIFT] + p->sub[s];                     \
    uint64_t i = s << (SUB_SHIFT - 3), end = bit >> 3;                         \
    for (; i + 8 <= end; i += 8) {                                             \
        uint64_t w;                                                            \
        memcpy(&w, p->bitmap + i, 8);                                          \
        r += (uint64_t)__builtin_popcountll(w);                                \
    }                                                                          \
    for (; i < end; i++)                                                       \
        r += (uint64_t)__builtin_popcountll(p->bitmap[i]);                     \
    if (bit & 7)                                                               \
        r += (uint64_t)__builtin_popcountll(p->bitmap[end] & ((1u << (bit & 7)) - 1)); \
    return r;

static uint64_t rank_generic(const kv_phys *p, uint64_t bit) { RANK_BODY }

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("popcnt"))) static uint64_t rank_popcnt(const kv_phys *p, uint64_t bit) { RANK_BODY }

static int have_popcnt = -1;

static uint64_t rank(const kv_phys *p, uint64_t bit)
{
    if (have_popcnt < 0) {
        __builtin_cpu_init();
        have_popcnt = __builtin_cpu_supports("popcnt") ? 1 : 0;
    }
    return have_popcnt ? rank_popcnt(p, bit) : rank_generic(p, bit);
}
#else
#define rank rank_generic
#endif

/* dump_avail-compressed bit id of pfn (DumpAvail.bit_id); 0 if in no range. */
static int bit_id(const kv_phys *p, uint64_t pfn, uint64_t *bit)
{
    const uint64_t *av = p->avail;
    uint64_t lo = 0, hi = p->navail; /* first r with first_pfn[r] > pfn */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (av[mid * 3] <= pfn)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0;
    uint64_t r = lo - 1;
    if (r > 0 && pfn < av[(r - 1) * 3 + 1]) /* a page shared with the previous range */
        r--;
    if (pfn >= av[r * 3 + 1])
        return 0;
    *bit = pfn - av[r * 3] + av[r * 3 + 2];
    return 1;
}

/* File offset of pa and the bytes contiguous from there in the file; 0 if not dumped. */
static int phys_find(const kv_phys *p, uint64_t pa, uint64_t *off, uint64_t *avail)
{
    if (p->kind == PHYS_BITMAP) {
        uint64_t bit;
        int shift = p->page_shift ? p->page_shift : PAGE_SHIFT; /* 14: 16 KiB arm64 minidump */
        uint64_t pmask = (1ULL << shift) - 1;
        if (!bit_id(p, pa >> shift, &bit) || bit >= p->nbits)
            return 0;
        if (!((p->bitmap[bit >> 3] >> (bit & 7)) & 1))
            return 0;
        uint64_t r = rank(p, bit);
        if (r >= p->present)
            return 0;
        *off = p->sparse_off + (r << shift) + (pa & pmask);
        *avail = (1ULL << shift) - (pa & pmask);
        return 1;
    }
    if (p->kind == PHYS_RUNS) {
        const uint64_t *runs = p->runs;
        uint64_t lo = 0, hi = p->nruns;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (runs[mid * 3] <= pa)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == 0)
            return 0;
        const uint64_t *run = runs + (lo - 1) * 3;
        if (pa - run[0] >= run[2])
            return 0;
        *off = run[1] + (pa - run[0]);
        *avail = run[2] - (pa - run[0]);
        return 1;
    }
    return 0;
}

int kv_phys_lookup(const kv_phys *p, uint64_t pa, uint64_t *off)
{
    uint64_t avail;
    return phys_find(p, pa, off, &avail);
}

/* Start of the next dumped byte after pa (runs only; bitmap: pa + 1 page); 0 if none. */
static uint64_t phys_next(const kv_phys *p, uint64_t pa)
{
    if (p->kind == PHYS_RUNS) {
        uint64_t lo = 0, hi = p->nruns;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (p->runs[mid * 3] <= pa)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo < p->nruns ? p->runs[lo * 3] : 0;
    }
    uint64_t next = (pa | PAGE_MASK) + 1;
    return next ? next : 0;
}

int kv_phys_read(const kv_phys *p, uint64_t pa, uint64_t n, uint8_t *dst, int pad, kv_err *err)
{
    while (n > 0) {
        uint64_t off, avail, take;
        if (!phys_find(p, pa, &off, &avail)) {
            if (!pad) {
                set_err(err, KV_E_PHYS, pa, pa & ~PAGE_MASK, 0);
                return -1;
            }
            uint64_t next = phys_next(p, pa);
            take = (next > pa && next - pa < n) ? next - pa : n;
            memset(dst, 0, (size_t)take);
        } else {
            take = avail < n ? avail : n;
            uint64_t got = file_copy(p, off, take, dst);
            if (got != take) {
                if (!pad) {
                    set_err(err, KV_E_FILE_END, pa + got, off + got, 0);
                    return -1;
                }
                memset(dst + got, 0, (size_t)(take - got));
            }
        }
        dst += take;
        pa += take;
        n -= take;
    }
    return 0;
}

/* ----------------------------------------------------------------- space */

/* The helpers the architecture files share (kv_internal.h). */
void kv_set_err(kv_err *e, int code, uint64_t addr, uint64_t detail, uint64_t detail2)
{
    set_err(e, code, addr, detail, detail2);
}

int kv_phys_set_page_shift(kv_phys *p, int page_shift)
{
    if (page_shift != 12 && page_shift != 14)
        return -1;
    p->page_shift = page_shift;
    return 0;
}

int kv_phys_find(const kv_phys *p, uint64_t pa, uint64_t *off, uint64_t *avail)
{
    return phys_find(p, pa, off, avail);
}

uint64_t kv_file_copy(const kv_phys *p, uint64_t off, uint64_t n, uint8_t *dst)
{
    return file_copy(p, off, n, dst);
}

kv_space *kv_space_alloc(const kv_phys *p, uint64_t root, int arch, int levels)
{
    kv_space *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (!(s->scratch = malloc(KV_SCRATCH))) {
        free(s);
        return NULL;
    }
    s->phys = p;
    s->root = root;
    s->arch = arch;
    s->levels = levels;
    return s;
}

kv_space *kv_space_new(const kv_phys *p, uint64_t root, int levels, int canon48)
{
    if (levels != 4 && levels != 5)
        return NULL;
    kv_space *s = kv_space_alloc(p, root, KV_ARCH_AMD64, levels);
    if (s)
        s->canon48 = canon48;
    return s;
}

void kv_space_free(kv_space *s)
{
    if (!s)
        return;
    free(s->own_pmap);
    free(s->scratch);
    free(s);
}

uint8_t *kv_space_scratch(kv_space *s) { return s->scratch; }
kv_err *kv_space_error(kv_space *s) { return &s->err; }

static uint64_t entry_at(const uint8_t *pmap, uint64_t i, int width)
{
    if (width == 8) {
        uint64_t e;
        memcpy(&e, pmap + i * 8, 8);
        return e;
    }
    uint32_t e;
    memcpy(&e, pmap + i * 4, 4);
    return e;
}

/* Whether the widened table equals nentries entries of width bytes at pmap. */
static int same_pmap(const uint64_t *table, const uint8_t *pmap, uint64_t nentries, int width)
{
    if (width == 8)
        return memcmp(table, pmap, (size_t)(nentries * 8)) == 0;
    for (uint64_t i = 0; i < nentries; i++)
        if (table[i] != entry_at(pmap, i, 4))
            return 0;
    return 1;
}

int kv_space_set_pmap(kv_space *s, int version, uint64_t kernbase, const uint8_t *pmap, uint64_t nentries,
                      int width)
{
    if (nentries > UINT64_MAX / 8)
        return -1;
    /* The phys is shared state the spaces only read, except for this cache. */
    kv_phys *p = (kv_phys *)s->phys;
    const uint64_t *table = NULL;
    uint64_t *own = NULL;
    if (nentries && p->pmap && p->pmap_entries == nentries && same_pmap(p->pmap, pmap, nentries, width)) {
        table = p->pmap;
    } else if (nentries) {
        uint64_t *copy = malloc((size_t)(nentries * 8));
        if (!copy)
            return -1;
        for (uint64_t i = 0; i < nentries; i++)
            copy[i] = entry_at(pmap, i, width);
        if (!p->pmap) {
            p->pmap = copy; /* the first space's table becomes the shared one */
            p->pmap_entries = nentries;
        } else {
            own = copy;
        }
        table = copy;
    }
    free(s->own_pmap);
    s->own_pmap = own;
    s->pmap = table;
    s->pmap_entries = nentries;
    s->md = 1;
    s->md_version = version;
    s->kernbase = kernbase;
    return 0;
}

int kv_space_set_minidump(kv_space *s, int version, uint64_t kernbase, uint64_t dmapbase, uint64_t dmapend,
                          const uint8_t *pmap, uint64_t nentries)
{
    if (version < 1 || version > 3 || kv_space_set_pmap(s, version, kernbase, pmap, nentries, 8))
        return -1;
    s->dmapbase = dmapbase;
    s->dmapend = dmapend;
    return 0;
}

static int canonical(uint64_t va, int levels)
{
    int shift = PAGE_SHIFT + 9 * levels - 1;
    uint64_t top = va >> shift;
    return top == 0 || top == (1ULL << (64 - shift)) - 1;
}

/* One translation, like the twin's kvatop: pa and file offset of va, valid
 * to the end of its 4 KiB page (and *avail bytes contiguous in the file).
 * On failure *skip is the size of the aligned VA block known to fail the
 * same way (used by kv_map to step over unmapped regions). */
static int translate(const kv_space *s, uint64_t va, uint64_t *pa, uint64_t *off, uint64_t *avail,
                     uint64_t *skip, kv_err *e)
{
    if (s->arch == KV_ARCH_I386)
        return kv_i386_translate(s, va, pa, off, avail, skip, e);
    if (s->arch == KV_ARCH_ARM64)
        return kv_arm64_translate(s, va, pa, off, avail, skip, e);
    const kv_phys *p = s->phys;
    uint64_t page_left = PAGE_SIZE - (va & PAGE_MASK);
    *skip = PAGE_SIZE;
    if (s->md && (va >= s->kernbase || (s->dmapbase <= va && va < s->dmapend))) {
        uint64_t page, o, a;
        int missing;
        if (va >= s->kernbase) {
            uint64_t index = (va - s->kernbase) >> (s->md_version == 1 ? PAGE_SHIFT : PDRSHIFT);
            if (index >= s->pmap_entries) {
                *skip = 0; /* everything above is beyond too */
                set_err(e, KV_E_MD_BEYOND, va, 0, 0);
                return -1;
            }
            uint64_t entry = s->pmap[index];
            if (s->md_version == 1) {
                if (!(entry & PG_V)) {
                    set_err(e, KV_E_MD_PTE, va, 0, 0);
                    return -1;
                }
                page = entry & PG_FRAME;
            } else {
                if (!(entry & PG_V)) {
                    *skip = NBPDR;
                    set_err(e, KV_E_MD_PDE, va, 0, 0);
                    return -1;
                }
                if (entry & PG_PS) {
                    page = (entry & PG_PS_FRAME) + (va & PDRMASK & ~PAGE_MASK);
                } else {
                    uint64_t ptpage = entry & PG_FRAME, pt_off, pt_avail;
                    uint8_t raw[8];
                    if (!phys_find(p, ptpage, &pt_off, &pt_avail)) {
                        *skip = NBPDR;
                        set_err(e, KV_E_MD_PTPAGE, va, ptpage, 0);
                        return -1;
                    }
                    if (file_copy(p, pt_off + ((va >> PAGE_SHIFT) & 511) * 8, 8, raw) != 8) {
                        set_err(e, KV_E_MD_PTTRUNC, va, ptpage, 0);
                        return -1;
                    }
                    uint64_t pte;
                    memcpy(&pte, raw, 8);
                    if (!(pte & PG_V)) {
                        set_err(e, KV_E_MD_PTE, va, 0, 0);
                        return -1;
                    }
                    page = pte & PG_FRAME;
                }
            }
            missing = KV_E_MD_PHYS;
        } else {
            page = (va - s->dmapbase) & ~PAGE_MASK;
            missing = KV_E_MD_DMAP;
        }
        if (!phys_find(p, page, &o, &a)) {
            set_err(e, missing, va, page, 0);
            return -1;
        }
        *pa = page + (va & PAGE_MASK);
        *off = o + (va & PAGE_MASK);
        *avail = page_left;
        return 0;
    }
    /* page walk (walk() in amd64.py) */
    if (!canonical(va, s->levels)) {
        *skip = 0;
        set_err(e, KV_E_NONCANON, va, 0, 0);
        return -1;
    }
    uint64_t table = s->root & PG_FRAME, leaf_left = page_left;
    for (int level = s->levels; level >= 1; level--) {
        int shift = PAGE_SHIFT + 9 * (level - 1);
        uint64_t epa = table + ((va >> shift) & 511) * 8, entry = 0;
        kv_err pe;
        if (kv_phys_read(p, epa, 8, (uint8_t *)&entry, 0, &pe) != 0) {
            *skip = shift + 9 < 64 ? 1ULL << (shift + 9) : 0;
            set_err(e, pe.code, va, pe.detail, 0);
            return -1;
        }
        if (!(entry & PG_V)) {
            *skip = 1ULL << shift;
            set_err(e, KV_E_ENTRY, va, (uint64_t)level, 0);
            return -1;
        }
        if ((entry & PG_PS) && (level == 2 || level == 3)) {
            uint64_t frame = level == 2 ? PG_PS_FRAME : PG_PS_PDP_FRAME;
            table = (entry & frame) | (va & ((1ULL << shift) - 1) & ~PAGE_MASK);
            leaf_left = (1ULL << shift) - (va & ((1ULL << shift) - 1));
            break;
        }
        table = entry & PG_FRAME;
    }
    uint64_t a;
    *pa = table | (va & PAGE_MASK);
    if (!phys_find(p, *pa, off, &a)) {
        set_err(e, KV_E_PHYS, va, *pa & ~PAGE_MASK, 0);
        return -1;
    }
    /* Bytes contiguous in VA, PA and file from here: to the end of the leaf
     * (so kv_map crosses a large page in one step) and of the dump run. */
    *avail = a < leaf_left ? a : leaf_left;
    return 0;
}

static inline uint64_t sext48(const kv_space *s, uint64_t va)
{
    if (s->canon48 && va < (1ULL << 48) && (va & (1ULL << 47)))
        return va | 0xFFFF000000000000ULL;
    return va;
}

int kv_translate(const kv_space *s, uint64_t va, uint64_t *pa, uint64_t *off, kv_err *err)
{
    uint64_t avail, skip;
    int rc = translate(s, sext48(s, va), pa, off, &avail, &skip, err);
    if (rc && err)
        err->addr = va;
    return rc;
}

/* Copy one chunk (never past the page of va) as the twin's _chunk does. */
static int read_chunk(const kv_space *s, uint64_t va, uint64_t n, uint8_t *dst, uint64_t *done, kv_err *e)
{
    uint64_t pa, off, avail, skip;
    *done = 0;
    if (translate(s, va, &pa, &off, &avail, &skip, e) != 0)
        return -1;
    int md = s->arch == KV_ARCH_ARM64 ? kv_arm64_is_md(s, va)
                                      : s->md && (va >= s->kernbase || (s->dmapbase <= va && va < s->dmapend));
    if (md) {
        uint64_t got = file_copy(s->phys, off, n, dst);
        if (got != n) {
            set_err(e, KV_E_MD_FILE_END, va, pa, off + got);
            return -1;
        }
    } else {
        kv_err pe;
        if (kv_phys_read(s->phys, pa, n, dst, 0, &pe) != 0) {
            set_err(e, pe.code, va, pe.detail, 0);
            return -1;
        }
    }
    *done = n;
    return 0;
}

int kv_read(const kv_space *s, uint64_t va, uint64_t n, uint8_t *dst, int pad, kv_err *err)
{
    while (n > 0) {
        uint64_t take = PAGE_SIZE - (va & PAGE_MASK), done;
        if (take > n)
            take = n;
        if (read_chunk(s, sext48(s, va), take, dst, &done, err) != 0) {
            if (!pad) {
                if (err)
                    err->addr = va;
                return -1;
            }
            memset(dst, 0, (size_t)take);
        }
        dst += take;
        va += take;
        n -= take;
    }
    return 0;
}

int kv_map(const kv_space *s, uint64_t va, uint64_t n, int ignore_errors, uint64_t *out, uint64_t max,
           uint64_t *count, uint64_t *done, kv_err *err)
{
    uint64_t c = 0, pos = 0;
    *count = 0;
    *done = 0;
    while (pos < n) {
        uint64_t cur = va + pos, pa, off, avail, skip;
        uint64_t cva = sext48(s, cur);
        if (translate(s, cva, &pa, &off, &avail, &skip, err) != 0) {
            if (!ignore_errors) {
                if (err)
                    err->addr = cur;
                *count = c;
                *done = pos;
                return -1;
            }
            /* step to the end of the failing block, in the caller's address space */
            uint64_t step;
            if (skip == 0) {
                if (err && err->code == KV_E_NONCANON && !s->canon48) {
                    uint64_t hi = s->levels == 5 ? 0xFF00000000000000ULL : 0xFFFF800000000000ULL;
                    step = cva < hi ? hi - cva : n - pos;
                } else {
                    step = n - pos;
                }
            } else {
                step = skip - (cva & (skip - 1));
            }
            pos = step > n - pos ? n : pos + step;
            continue;
        }
        uint64_t take = avail < n - pos ? avail : n - pos;
        if (c > 0) {
            uint64_t *last = out + (c - 1) * 4;
            if (last[0] + last[3] == cur && last[1] + last[3] == pa && last[2] + last[3] == off) {
                last[3] += take;
                pos += take;
                continue;
            }
        }
        if (c == max)
            break;
        out[c * 4] = cur;
        out[c * 4 + 1] = pa;
        out[c * 4 + 2] = off;
        out[c * 4 + 3] = take;
        c++;
        pos += take;
    }
    *count = c;
    *done = pos;
    return 0;
}

int kv_read_scratch(kv_space *s, uint64_t va, uint64_t n, int pad)
{
    if (n > KV_SCRATCH) {
        set_err(&s->err, KV_E_ARG, va, n, 0);
        return -1;
    }
    return kv_read(s, va, n, s->scratch, pad, &s->err);
}
