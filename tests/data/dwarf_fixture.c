/*
 * DWARF fixture for tests/test_dwarf2isf.py and tests/test_typepacks.py.
 * Built by build_fixtures.sh (zig cc, FreeBSD targets); the objects are
 * committed so the tests never need a compiler.  Every construct the ISF
 * converter must get right appears here, and the initialised objects let the
 * tests compare what Volatility reads through the ISF with the values the
 * compiler stored.
 */
#include <stdint.h>

typedef unsigned int u32;
typedef u32 my_u32;
typedef my_u32 tdchain_t;		/* typedef chain: tdchain_t -> my_u32 -> u32 -> unsigned int */

enum color { RED = 0, GREEN = 5, BLUE = -1 };
enum big { BIG_A = 1, BIG_B = 0x80000000u };

struct node;
typedef int (*callback_t)(struct node *, void *);

struct bits {
	unsigned int a : 3;
	unsigned int b : 5;
	signed int   c : 7;
	enum color   col : 4;
	uint64_t     wide : 40;
	uint8_t      tail;
	_Bool        flag : 1;
};

struct node {
	struct node *next;
	struct { struct node *le_next; struct node **le_prev; } link;	/* LIST_ENTRY-style */
	union {
		long as_long;
		struct { short lo; short hi; };	/* anonymous struct in an anonymous union */
	};
	struct { int x; int y; };		/* anonymous struct */
	int grid[2][3];
	const volatile tdchain_t chained;
	callback_t cb;
	void (*vfn)(void);
	char name[16];
	struct bits bits;
	enum color col;
	unsigned long flex[];			/* flexible array member */
};

typedef struct { int anon_a; char anon_b; } anon_typedef_t;

union u { int i; float f; double d; char c[12]; };

char version[256] = "FreeBSD 99.0-FIXTURE #0 kvm-vol: reproducible\n    fixture@kvm-vol:/sys/FIXTURE\n";

struct bits fixture_bits = { .a = 5, .b = 17, .c = -33, .col = GREEN, .wide = 0x123456789aULL, .tail = 0xee, .flag = 1 };
struct node fixture_node = {
	.lo = 0x1234, .hi = -2, .x = 7, .y = -8,
	.grid = { { 1, 2, 3 }, { 4, 5, 6 } },
	.chained = 0xc0ffee, .name = "node-name",
	.bits = { .a = 2, .b = 31, .c = 63, .col = BLUE, .wide = 0xfedcba9876ULL, .tail = 1, .flag = 0 },
	.col = BLUE,
};
anon_typedef_t fixture_anon = { -5, 'z' };
union u fixture_union = { .d = 2.5 };
enum big fixture_big = BIG_B;
int fixture_matrix[4][5][6];
static int fixture_static = 7;
int *fixture_ptr = &fixture_static;
callback_t fixture_cb;

int
fixture_func(int x)
{
	static int counter;	/* function-scope static: must not become an ISF symbol */

	counter += x;
	return (counter);
}
