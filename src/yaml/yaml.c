/* kubelua.yaml.core: YAML <-> Lua values on libyaml's event parser and emitter.
 *
 * Decoding reads one document's events into a small node tree (an arena, so
 * an error anywhere frees everything at once), then walks the tree once to
 * build Lua values. Scalars resolve as go-yaml v2 resolves them, since
 * Kubernetes turns YAML into JSON through sigs.k8s.io/yaml -> go-yaml v2
 * (kubelet-behaviour.md 4.7): YAML 1.1 booleans (yes/no/on/off/y/n), ints in
 * Go's base-0 syntax, non-string keys turned into strings. docs/yaml.md has
 * the whole mapping and the limits (size, depth, alias expansion).
 *
 * core.null: a YAML null inside tables (a light userdata, NULL).
 * core.array_mt: the metatable marking tables decoded from sequences.
 * kubelua.yaml re-exports both.
 *
 * Every function carries the same upvalues (see luaopen below). */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <locale.h>
#include <lua.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#include <yaml.h>

#define LUA_TCDATA 10 /* LuaJIT's type tag for FFI cdata */

#define UV_ARRAY_MT lua_upvalueindex(1) /* metatable marking arrays */
#define UV_CELLS lua_upvalueindex(2)    /* userdata: int64_t *, uint64_t * */
#define UV_BOX_I64 lua_upvalueindex(3)  /* function() return si[0] end */
#define UV_BOX_U64 lua_upvalueindex(4)  /* function() return su[0] end */
#define UV_INT_TEXT lua_upvalueindex(5) /* function(v) -> digits of a boxed integer | nil */
#define UV_KEEP lua_upvalueindex(6)     /* table keeping the FFI cells alive */
#define N_UPVALUES 6

#define EXACT_LIMIT 9007199254740992LL /* 2^53 */
#define ERR_MAX 512

typedef struct {
    int64_t *si;
    uint64_t *su;
} box_cells;

static const char BOX_CODE[] =
    "local ffi = require('ffi')\n"
    "local si, su = ffi.new('int64_t[1]'), ffi.new('uint64_t[1]')\n"
    "local i64, u64, istype = ffi.typeof('int64_t'), ffi.typeof('uint64_t'), ffi.istype\n"
    "local tostring = tostring\n"
    "return si, su,\n"
    "  function() return si[0] end,\n"
    "  function() return su[0] end,\n"
    "  function(v)\n"
    "    if istype(i64, v) or istype(u64, v) then return (tostring(v):gsub('U?LL$', '')) end\n"
    "  end\n";

/* ===================================================== scalar resolution */

/* What a plain scalar means (go-yaml v2's resolve, YAML 1.1). */
enum { R_NULL, R_BOOL, R_INT, R_UINT, R_FLOAT, R_STR, R_TIMESTAMP };

typedef struct {
    int kind;
    int b;
    int64_t i;
    uint64_t u;
    double f;
} resolved;

typedef struct {
    const char *s;
    size_t len;
    int kind;
    int b;    /* R_BOOL */
    double f; /* R_FLOAT */
} fixed_word;

#define W(s, kind, b, f)                                                                           \
    {                                                                                              \
        s, sizeof(s) - 1, kind, b, f                                                               \
    }

/* The spellings resolved by exact match (go-yaml v2's table; YAML 1.1
 * booleans included). */
static const fixed_word WORDS[] = {
    W("y", R_BOOL, 1, 0),
    W("Y", R_BOOL, 1, 0),
    W("yes", R_BOOL, 1, 0),
    W("Yes", R_BOOL, 1, 0),
    W("YES", R_BOOL, 1, 0),
    W("true", R_BOOL, 1, 0),
    W("True", R_BOOL, 1, 0),
    W("TRUE", R_BOOL, 1, 0),
    W("on", R_BOOL, 1, 0),
    W("On", R_BOOL, 1, 0),
    W("ON", R_BOOL, 1, 0),
    W("n", R_BOOL, 0, 0),
    W("N", R_BOOL, 0, 0),
    W("no", R_BOOL, 0, 0),
    W("No", R_BOOL, 0, 0),
    W("NO", R_BOOL, 0, 0),
    W("false", R_BOOL, 0, 0),
    W("False", R_BOOL, 0, 0),
    W("FALSE", R_BOOL, 0, 0),
    W("off", R_BOOL, 0, 0),
    W("Off", R_BOOL, 0, 0),
    W("OFF", R_BOOL, 0, 0),
    W("~", R_NULL, 0, 0),
    W("null", R_NULL, 0, 0),
    W("Null", R_NULL, 0, 0),
    W("NULL", R_NULL, 0, 0),
    W(".nan", R_FLOAT, 0, NAN),
    W(".NaN", R_FLOAT, 0, NAN),
    W(".NAN", R_FLOAT, 0, NAN),
    W(".inf", R_FLOAT, 0, INFINITY),
    W(".Inf", R_FLOAT, 0, INFINITY),
    W(".INF", R_FLOAT, 0, INFINITY),
    W("+.inf", R_FLOAT, 0, INFINITY),
    W("+.Inf", R_FLOAT, 0, INFINITY),
    W("+.INF", R_FLOAT, 0, INFINITY),
    W("-.inf", R_FLOAT, 0, -INFINITY),
    W("-.Inf", R_FLOAT, 0, -INFINITY),
    W("-.INF", R_FLOAT, 0, -INFINITY),
};

#undef W

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int lower(int c)
{
    return c | 0x20;
}

/* Go's strconv.ParseUint(s, 0, 64): 0b/0o/0x prefixes, a leading 0 is
 * octal, no sign. 0 = ok, 1 = syntax error, 2 = out of range. */
static int go_parse_uint(const char *s, size_t n, uint64_t *out)
{
    if (n == 0)
        return 1;
    unsigned base = 10;
    if (s[0] == '0') {
        if (n >= 3 && lower(s[1]) == 'b')
            base = 2, s += 2, n -= 2;
        else if (n >= 3 && lower(s[1]) == 'o')
            base = 8, s += 2, n -= 2;
        else if (n >= 3 && lower(s[1]) == 'x')
            base = 16, s += 2, n -= 2;
        else
            base = 8, s += 1, n -= 1;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        unsigned d;
        if (is_digit(c))
            d = (unsigned)(c - '0');
        else if (lower(c) >= 'a' && lower(c) <= 'z')
            d = (unsigned)(lower(c) - 'a' + 10);
        else
            return 1;
        if (d >= base)
            return 1;
        if (v > (UINT64_MAX - d) / base)
            return 2;
        v = v * base + d;
    }
    *out = v;
    return 0;
}

/* Go's strconv.ParseInt(s, 0, 64). */
static int go_parse_int(const char *s, size_t n, int64_t *out)
{
    int neg = 0;
    if (n > 0 && (s[0] == '+' || s[0] == '-'))
        neg = s[0] == '-', s++, n--;
    uint64_t u;
    int rc = go_parse_uint(s, n, &u);
    if (rc != 0)
        return rc;
    if (!neg && u > (uint64_t)INT64_MAX)
        return 2;
    if (neg && u > (uint64_t)INT64_MAX + 1)
        return 2;
    *out = neg ? (int64_t)(0 - u) : (int64_t)u;
    return 0;
}

/* Skip the digits at s[*i]; 1 when there was at least one. */
static int skip_digits(const char *s, size_t n, size_t *i)
{
    size_t d = *i;
    while (*i < n && is_digit(s[*i]))
        (*i)++;
    return *i > d;
}

/* Skip the digits at s[*i] with single '_' between them, as Go's ParseFloat
 * takes them; 0 when there is no digit, or a '_' first, last or doubled. */
static int skip_digits_us(const char *s, size_t n, size_t *i)
{
    int digits = 0, prev_us = 0;
    for (; *i < n && (is_digit(s[*i]) || s[*i] == '_'); (*i)++) {
        if (s[*i] == '_') {
            if (!digits || prev_us)
                return 0;
            prev_us = 1;
        } else {
            digits++, prev_us = 0;
        }
    }
    return digits && !prev_us;
}

/* Skip an exponent's 'e' or 'E' and its sign at s[*i]; 0 when there is none. */
static int skip_exponent_mark(const char *s, size_t n, size_t *i)
{
    if (*i >= n || (s[*i] != 'e' && s[*i] != 'E'))
        return 0;
    (*i)++;
    if (*i < n && (s[*i] == '+' || s[*i] == '-'))
        (*i)++;
    return 1;
}

/* ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$ (go-yaml's float form) */
static int yaml_style_float(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        i++;
    if (i < n && s[i] == '.') {
        i++;
        if (!skip_digits(s, n, &i))
            return 0;
    } else {
        if (!skip_digits(s, n, &i))
            return 0;
        if (i < n && s[i] == '.') {
            i++;
            skip_digits(s, n, &i);
        }
    }
    if (skip_exponent_mark(s, n, &i) && !skip_digits(s, n, &i))
        return 0;
    return i == n;
}

/* A scalar starting with '.': Go's ParseFloat accepts ".5", ".5e3" and
 * underscores between digits (".5_5"). */
static int dot_float(const char *s, size_t n)
{
    size_t i = 1;
    if (!skip_digits_us(s, n, &i))
        return 0;
    if (skip_exponent_mark(s, n, &i) && !skip_digits_us(s, n, &i))
        return 0;
    return i == n;
}

/* strtod on a checked decimal form, whatever LC_NUMERIC says. */
static double parse_decimal(const char *s, size_t n)
{
    char stack[128];
    char *buf = n < sizeof stack ? stack : malloc(n + 1);
    if (buf == NULL)
        return NAN;
    char point = localeconv()->decimal_point[0];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '_')
            continue;
        buf[k++] = s[i] == '.' ? point : s[i];
    }
    buf[k] = '\0';
    double v = strtod(buf, NULL);
    if (buf != stack)
        free(buf);
    return v;
}

static int get_num(const char **p, const char *end, int min, int max, int *out)
{
    int n = 0, v = 0;
    while (*p < end && is_digit(**p) && n < max)
        v = v * 10 + (*(*p)++ - '0'), n++;
    *out = v;
    return n >= min;
}

/* go-yaml's timestamp forms: 2006-1-2, 2006-1-2 15:4:5.999999999 and
 * 2006-1-2T15:4:5.999999999Z07:00 (T or t). */
static int is_timestamp(const char *s, size_t n)
{
    const char *p = s, *end = s + n;
    int y, mo, d, h, mi, sec;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!get_num(&p, end, 4, 4, &y) || p == end || *p++ != '-' || !get_num(&p, end, 1, 2, &mo) ||
        p == end || *p++ != '-' || !get_num(&p, end, 1, 2, &d))
        return 0;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
        return 0;
    if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 0;
    if (p == end)
        return 1;
    char sep = *p++;
    if (sep != 'T' && sep != 't' && sep != ' ')
        return 0;
    if (!get_num(&p, end, 1, 2, &h) || p == end || *p++ != ':' || !get_num(&p, end, 1, 2, &mi) ||
        p == end || *p++ != ':' || !get_num(&p, end, 1, 2, &sec))
        return 0;
    if (h > 23 || mi > 59 || sec > 59)
        return 0;
    if (p < end && *p == '.') {
        p++;
        int frac;
        if (!get_num(&p, end, 1, 9, &frac))
            return 0;
    }
    if (sep == ' ')
        return p == end;
    if (p < end && *p == 'Z')
        return p + 1 == end;
    if (p < end && (*p == '+' || *p == '-')) {
        int zh, zm;
        p++;
        if (!get_num(&p, end, 2, 2, &zh) || p == end || *p++ != ':' || !get_num(&p, end, 2, 2, &zm))
            return 0;
        return p == end && zh < 24 && zm < 60;
    }
    return 0;
}

/* Resolve a plain scalar. `try_ts` as go-yaml: only untagged or
 * !!timestamp scalars may be timestamps. */
static void resolve(const char *s, size_t n, int try_ts, resolved *r)
{
    memset(r, 0, sizeof *r);
    r->kind = R_STR;
    if (n == 0) {
        r->kind = R_NULL;
        return;
    }
    int c = (unsigned char)s[0];
    int hint;
    if (is_digit(c))
        hint = 'D';
    else if (c == '+' || c == '-')
        hint = 'S';
    else if (c == '.')
        hint = '.';
    else if (c != 0 && strchr("yYnNtTfFoO~", c) != NULL)
        hint = 'M';
    else
        return;
    if (n <= 5) {
        for (size_t i = 0; i < sizeof WORDS / sizeof WORDS[0]; i++) {
            if (WORDS[i].len == n && WORDS[i].s[0] == c && memcmp(WORDS[i].s, s, n) == 0) {
                r->kind = WORDS[i].kind;
                r->b = WORDS[i].b;
                r->f = WORDS[i].f;
                return;
            }
        }
    }
    if (hint == 'M')
        return;
    if (hint == '.') {
        if (dot_float(s, n)) {
            r->kind = R_FLOAT;
            r->f = parse_decimal(s, n);
        }
        return;
    }
    if (try_ts && n >= 8 && is_timestamp(s, n)) {
        r->kind = R_TIMESTAMP;
        return;
    }
    /* ints, uints and floats, with every '_' removed first (go-yaml) */
    char stack[128];
    char *plain = n < sizeof stack ? stack : malloc(n + 1);
    if (plain == NULL)
        return;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] != '_')
            plain[k++] = s[i];
    plain[k] = '\0';
    if (go_parse_int(plain, k, &r->i) == 0) {
        r->kind = R_INT;
    } else if (go_parse_uint(plain, k, &r->u) == 0) {
        r->kind = R_UINT;
    } else if (yaml_style_float(plain, k)) {
        double f = parse_decimal(plain, k);
        if (!isinf(f)) { /* Go's ParseFloat fails on overflow: a string */
            r->kind = R_FLOAT;
            r->f = f;
        }
    }
    if (plain != stack)
        free(plain);
}

/* ======================================================== decode: tree */

enum { N_SCALAR, N_SEQ, N_MAP, N_ALIAS };
enum { T_NONE, T_STR, T_INT, T_BOOL, T_FLOAT, T_NULL, T_BINARY, T_TIMESTAMP, T_MERGE, T_OTHER };
enum { F_PLAIN = 1, F_BUSY = 2 };

typedef struct node node;
struct node {
    node *next; /* sibling */
    union {
        struct {
            const char *s;
            size_t len;
        } sc;
        struct {
            node *first;
            uint32_t count;
        } kids;
        struct {
            node *target;
            const char *name;
        } al;
    } u;
    uint32_t line, col;
    uint8_t kind, tag, flags;
};

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    void *data[]; /* pointer-aligned: all the arena holds */
} chunk;

typedef struct {
    const char *name;
    node *n;
} anchor_slot;

typedef struct {
    node *n, *last;
} frame;

#define CHUNK_MIN (8 * 1024)
#define CHUNK_MAX (64 * 1024)

typedef struct {
    yaml_parser_t parser;
    int parser_live;
    chunk *chunks;
    anchor_slot *anchors;
    size_t anchors_cap, anchors_used;
    frame *stack;
    int depth;
    node *root;
    char *input_copy;
    /* limits */
    const char *name;
    int max_depth;
    long max_alias;
    int omit_null;
    /* conversion */
    lua_State *L;
    int array_mt;
    int cdepth;
    int alias_depth;
    long decode_count, alias_count;
    node *alias_root;
    char err[ERR_MAX];
} dctx;

/* Push a zeroed userdata of `size` bytes whose metatable has `gc` as __gc:
 * a decode or encode context, released by the collector whatever happens. */
static void *new_context(lua_State *L, size_t size, lua_CFunction gc)
{
    void *p = lua_newuserdata(L, size);
    memset(p, 0, size);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    return p;
}

static void dctx_release(dctx *c)
{
    if (c->parser_live) {
        yaml_parser_delete(&c->parser);
        c->parser_live = 0;
    }
    for (chunk *k = c->chunks, *next; k != NULL; k = next) {
        next = k->next;
        free(k);
    }
    c->chunks = NULL;
    free(c->anchors);
    c->anchors = NULL;
    free(c->stack);
    c->stack = NULL;
    free(c->input_copy);
    c->input_copy = NULL;
}

static int dctx_gc(lua_State *L)
{
    dctx_release(lua_touserdata(L, 1));
    return 0;
}

/* Bump allocation in chunks that grow from 8 KiB to 64 KiB; a request
 * over a quarter of the next chunk gets a chunk of its own. */
static void *arena_alloc(dctx *c, size_t n)
{
    n = (n + sizeof(void *) - 1) & ~(sizeof(void *) - 1);
    chunk *k = c->chunks;
    if (k != NULL && k->cap - k->used >= n) {
        void *p = (char *)k->data + k->used;
        k->used += n;
        return p;
    }
    size_t next = k == NULL ? CHUNK_MIN : k->cap * 2 > CHUNK_MAX ? CHUNK_MAX : k->cap * 2;
    int own = n > next / 4;
    chunk *fresh = malloc(sizeof *fresh + (own ? n : next));
    if (fresh == NULL)
        return NULL;
    fresh->cap = own ? n : next;
    fresh->used = n;
    if (own && k != NULL) { /* keep filling the current chunk */
        fresh->next = k->next;
        k->next = fresh;
    } else {
        fresh->next = k;
        c->chunks = fresh;
    }
    return fresh->data;
}

static void arena_reset(dctx *c)
{
    for (chunk *k = c->chunks, *next; k != NULL; k = next) {
        next = k->next;
        free(k);
    }
    c->chunks = NULL;
}

/* Set c->err to "name:line:col: message"; returns -1. */
static int vfail(dctx *c, uint32_t line, uint32_t col, const char *fmt, va_list ap)
{
    int n = snprintf(c->err, sizeof c->err, "%s:%u:%u: ", c->name, line, col);
    if (n < 0 || (size_t)n >= sizeof c->err)
        n = 0;
    vsnprintf(c->err + n, sizeof c->err - (size_t)n, fmt, ap);
    return -1;
}

static int fail(dctx *c, uint32_t line, uint32_t col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(c, line, col, fmt, ap);
    va_end(ap);
    return -1;
}

static int fail_node(dctx *c, const node *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(c, n->line, n->col, fmt, ap);
    va_end(ap);
    return -1;
}

static int fail_nomem(dctx *c)
{
    snprintf(c->err, sizeof c->err, "%s: out of memory", c->name);
    return -1;
}

static int parser_fail(dctx *c)
{
    yaml_parser_t *p = &c->parser;
    const char *problem = p->problem ? p->problem : "cannot parse";
    switch (p->error) {
    case YAML_MEMORY_ERROR:
        return fail_nomem(c);
    case YAML_READER_ERROR:
        if (p->problem_value != -1)
            snprintf(c->err, sizeof c->err, "%s: byte %zu: %s (#%X)", c->name, p->problem_offset,
                     problem, (unsigned)p->problem_value);
        else
            snprintf(c->err, sizeof c->err, "%s: byte %zu: %s", c->name, p->problem_offset,
                     problem);
        return -1;
    default:
        break;
    }
    int n = snprintf(c->err, sizeof c->err, "%s:%zu:%zu: %s", c->name, p->problem_mark.line + 1,
                     p->problem_mark.column + 1, problem);
    if (p->context && n > 0 && (size_t)n < sizeof c->err)
        snprintf(c->err + n, sizeof c->err - (size_t)n, " (%s at %zu:%zu)", p->context,
                 p->context_mark.line + 1, p->context_mark.column + 1);
    return -1;
}

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static anchor_slot *anchor_find(dctx *c, const char *name)
{
    if (c->anchors_cap == 0)
        return NULL;
    size_t mask = c->anchors_cap - 1;
    for (size_t i = hash_name(name) & mask;; i = (i + 1) & mask) {
        anchor_slot *s = &c->anchors[i];
        if (s->name == NULL || strcmp(s->name, name) == 0)
            return s;
    }
}

static int anchor_put(dctx *c, const char *name, node *n)
{
    if ((c->anchors_used + 1) * 2 > c->anchors_cap) {
        size_t cap = c->anchors_cap ? c->anchors_cap * 2 : 16;
        anchor_slot *old = c->anchors;
        size_t old_cap = c->anchors_cap;
        c->anchors = calloc(cap, sizeof *c->anchors);
        if (c->anchors == NULL) {
            c->anchors = old;
            return fail_nomem(c);
        }
        c->anchors_cap = cap;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].name != NULL)
                *anchor_find(c, old[i].name) = old[i];
        free(old);
    }
    anchor_slot *s = anchor_find(c, name);
    if (s->name == NULL) {
        size_t len = strlen(name);
        char *copy = arena_alloc(c, len + 1);
        if (copy == NULL)
            return fail_nomem(c);
        memcpy(copy, name, len + 1);
        s->name = copy;
        c->anchors_used++;
    }
    s->n = n; /* a later anchor of the same name replaces the earlier one */
    return 0;
}

static uint8_t tag_of(const yaml_char_t *tag)
{
    static const char prefix[] = "tag:yaml.org,2002:";
    static const struct {
        const char *name;
        uint8_t tag;
    } known[] = {
        {"str", T_STR},   {"int", T_INT},       {"bool", T_BOOL},           {"float", T_FLOAT},
        {"null", T_NULL}, {"binary", T_BINARY}, {"timestamp", T_TIMESTAMP}, {"merge", T_MERGE}};
    if (tag == NULL)
        return T_NONE;
    const char *t = (const char *)tag;
    if (strncmp(t, prefix, sizeof prefix - 1) != 0)
        return T_OTHER;
    t += sizeof prefix - 1;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(t, known[i].name) == 0)
            return known[i].tag;
    return T_OTHER;
}

static node *new_node(dctx *c, int kind, yaml_mark_t m)
{
    node *n = arena_alloc(c, sizeof *n);
    if (n == NULL)
        return NULL;
    memset(n, 0, sizeof *n);
    n->kind = (uint8_t)kind;
    n->line = (uint32_t)m.line + 1;
    n->col = (uint32_t)m.column + 1;
    return n;
}

static void attach(dctx *c, node *n)
{
    if (c->depth == 0) {
        c->root = n;
        return;
    }
    frame *f = &c->stack[c->depth - 1];
    if (f->last)
        f->last->next = n;
    else
        f->n->u.kids.first = n;
    f->last = n;
    f->n->u.kids.count++;
}

/* Handle one event; 2 = go on, 1 = document read, 0 = end of stream,
 * -1 = error. */
static int on_event(dctx *c, yaml_event_t *ev)
{
    node *n;
    switch (ev->type) {
    case YAML_STREAM_END_EVENT:
        return 0;
    case YAML_DOCUMENT_START_EVENT:
        c->anchors_used = 0;
        if (c->anchors)
            memset(c->anchors, 0, c->anchors_cap * sizeof *c->anchors);
        c->depth = 0;
        c->root = NULL;
        return 2;
    case YAML_DOCUMENT_END_EVENT:
        return 1;
    case YAML_ALIAS_EVENT: {
        anchor_slot *s = anchor_find(c, (const char *)ev->data.alias.anchor);
        if (s == NULL || s->name == NULL)
            return fail(c, (uint32_t)ev->start_mark.line + 1, (uint32_t)ev->start_mark.column + 1,
                        "unknown anchor '%s' referenced", (const char *)ev->data.alias.anchor);
        if ((n = new_node(c, N_ALIAS, ev->start_mark)) == NULL)
            return fail_nomem(c);
        n->u.al.target = s->n;
        n->u.al.name = s->name;
        attach(c, n);
        return 2;
    }
    case YAML_SCALAR_EVENT: {
        if ((n = new_node(c, N_SCALAR, ev->start_mark)) == NULL)
            return fail_nomem(c);
        size_t len = ev->data.scalar.length;
        char *s = arena_alloc(c, len + 1);
        if (s == NULL)
            return fail_nomem(c);
        memcpy(s, ev->data.scalar.value, len);
        s[len] = '\0';
        n->u.sc.s = s;
        n->u.sc.len = len;
        n->tag = tag_of(ev->data.scalar.tag);
        if (ev->data.scalar.plain_implicit)
            n->flags |= F_PLAIN;
        if (ev->data.scalar.anchor && anchor_put(c, (const char *)ev->data.scalar.anchor, n) != 0)
            return -1;
        attach(c, n);
        return 2;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        if (c->depth >= c->max_depth)
            return fail(c, (uint32_t)ev->start_mark.line + 1, (uint32_t)ev->start_mark.column + 1,
                        "nesting deeper than %d levels (max_depth)", c->max_depth);
        if ((n = new_node(c, is_map ? N_MAP : N_SEQ, ev->start_mark)) == NULL)
            return fail_nomem(c);
        const yaml_char_t *anchor =
            is_map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor;
        if (anchor && anchor_put(c, (const char *)anchor, n) != 0)
            return -1;
        attach(c, n);
        c->stack[c->depth].n = n;
        c->stack[c->depth].last = NULL;
        c->depth++;
        return 2;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        c->depth--;
        return 2;
    default:
        return 2;
    }
}

/* Read the next document into c->root: 1 = read, 0 = no more, -1 = error. */
static int read_document(dctx *c)
{
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&c->parser, &ev))
            return parser_fail(c);
        int rc = on_event(c, &ev);
        yaml_event_delete(&ev);
        if (rc != 2)
            return rc;
    }
}

/* ====================================================== decode: to Lua */

static void push_int(lua_State *L, int64_t v)
{
    if (v >= -EXACT_LIMIT && v <= EXACT_LIMIT) {
        lua_pushnumber(L, (lua_Number)v);
        return;
    }
    box_cells *cells = lua_touserdata(L, UV_CELLS);
    *cells->si = v;
    lua_pushvalue(L, UV_BOX_I64);
    lua_call(L, 0, 1);
}

static void push_uint(lua_State *L, uint64_t v)
{
    if (v <= (uint64_t)EXACT_LIMIT) {
        lua_pushnumber(L, (lua_Number)v);
        return;
    }
    box_cells *cells = lua_touserdata(L, UV_CELLS);
    *cells->su = v;
    lua_pushvalue(L, UV_BOX_U64);
    lua_call(L, 0, 1);
}

static int b64_value(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* !!binary: standard base64 with padding; line breaks are ignored. */
static int push_binary(dctx *c, node *n)
{
    lua_State *L = c->L;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    size_t count = 0;
    for (size_t i = 0; i < n->u.sc.len; i++) {
        int ch = (unsigned char)n->u.sc.s[i];
        if (ch == '\n' || ch == '\r')
            continue;
        count++;
        if (ch == '=') {
            pad++;
            continue;
        }
        int v = b64_value(ch);
        if (v < 0 || pad)
            goto bad;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            luaL_addchar(&b, (char)((acc >> bits) & 0xff));
        }
    }
    if (count % 4 != 0 || pad > 2)
        goto bad;
    luaL_pushresult(&b);
    return 0;
bad:
    luaL_pushresult(&b);
    lua_pop(L, 1);
    return fail_node(c, n, "!!binary value contains invalid base64 data");
}

static const char *rname(int kind)
{
    switch (kind) {
    case R_NULL:
        return "!!null";
    case R_BOOL:
        return "!!bool";
    case R_INT:
    case R_UINT:
        return "!!int";
    case R_FLOAT:
        return "!!float";
    case R_TIMESTAMP:
        return "!!timestamp";
    default:
        return "!!str";
    }
}

static const char *tname(int tag)
{
    switch (tag) {
    case T_NULL:
        return "!!null";
    case T_BOOL:
        return "!!bool";
    case T_INT:
        return "!!int";
    case T_FLOAT:
        return "!!float";
    case T_TIMESTAMP:
        return "!!timestamp";
    default:
        return "!!str";
    }
}

/* The resolved value of a scalar node, tags honoured; -1 on a mismatch. */
static int scalar_value(dctx *c, node *n, resolved *r)
{
    int tag = n->tag;
    if (tag == T_STR || tag == T_OTHER || tag == T_MERGE || tag == T_BINARY ||
        (tag == T_NONE && !(n->flags & F_PLAIN))) {
        memset(r, 0, sizeof *r);
        r->kind = R_STR;
        return 0;
    }
    resolve(n->u.sc.s, n->u.sc.len, tag == T_NONE || tag == T_TIMESTAMP, r);
    int ok;
    switch (tag) {
    case T_NONE:
        return 0;
    case T_FLOAT:
        if (r->kind == R_INT) {
            r->kind = R_FLOAT;
            r->f = (double)r->i;
        }
        ok = r->kind == R_FLOAT;
        break;
    case T_INT:
        ok = r->kind == R_INT || r->kind == R_UINT;
        break;
    case T_BOOL:
        ok = r->kind == R_BOOL;
        break;
    case T_NULL:
        ok = r->kind == R_NULL;
        break;
    default: /* T_TIMESTAMP */
        ok = r->kind == R_TIMESTAMP;
        break;
    }
    if (!ok)
        return fail_node(c, n, "cannot decode %s `%.*s` as a %s", rname(r->kind),
                         (int)(n->u.sc.len > 60 ? 60 : n->u.sc.len), n->u.sc.s, tname(tag));
    return 0;
}

static int push_scalar(dctx *c, node *n)
{
    lua_State *L = c->L;
    if (n->tag == T_BINARY)
        return push_binary(c, n);
    resolved r;
    if (scalar_value(c, n, &r) != 0)
        return -1;
    switch (r.kind) {
    case R_NULL:
        lua_pushlightuserdata(L, NULL);
        break;
    case R_BOOL:
        lua_pushboolean(L, r.b);
        break;
    case R_INT:
        push_int(L, r.i);
        break;
    case R_UINT:
        push_uint(L, r.u);
        break;
    case R_FLOAT:
        lua_pushnumber(L, r.f);
        break;
    default: /* strings and timestamps (go-yaml v2 gives timestamps as strings) */
        lua_pushlstring(L, n->u.sc.s, n->u.sc.len);
        break;
    }
    return 0;
}

/* go-yaml v2's rule against alias bombs (its ratio of alias-produced to all
 * decoded nodes), plus our absolute cap `max_alias`. */
static int count_node(dctx *c, node *n)
{
    c->decode_count++;
    if (c->alias_depth > 0)
        c->alias_count++;
    if (c->alias_depth == 0)
        return 0;
    const node *at = c->alias_root ? c->alias_root : n;
    if (c->alias_count > c->max_alias)
        return fail_node(c, at, "aliases expand to more than %ld nodes (max_alias_nodes)",
                         c->max_alias);
    if (c->alias_count > 100 && c->decode_count > 1000) {
        double allowed;
        if (c->decode_count <= 400000)
            allowed = 0.99;
        else if (c->decode_count >= 4000000)
            allowed = 0.10;
        else
            allowed = 0.99 - 0.89 * ((double)(c->decode_count - 400000) / 3600000.0);
        if ((double)c->alias_count / (double)c->decode_count > allowed)
            return fail_node(c, at,
                             "document contains excessive aliasing (%ld of %ld nodes come from "
                             "aliases)",
                             c->alias_count, c->decode_count);
    }
    return 0;
}

static int enter_alias(dctx *c, node *a)
{
    if (a->flags & F_BUSY)
        return fail_node(c, a, "anchor '%s' value contains itself", a->u.al.name);
    a->flags |= F_BUSY;
    if (c->alias_depth++ == 0)
        c->alias_root = a;
    return 0;
}

static void leave_alias(dctx *c, node *a)
{
    a->flags &= (uint8_t)~F_BUSY;
    if (--c->alias_depth == 0)
        c->alias_root = NULL;
}

static int push_node(dctx *c, node *n);

/* Go's strconv.FormatFloat(v, 'g', -1, 32), as sigs.k8s.io/yaml writes
 * float keys. */
static void go_float32_g(double d, char *out, size_t cap)
{
    float f = (float)d;
    if (isnan(f)) {
        snprintf(out, cap, ".nan");
        return;
    }
    if (isinf(f)) {
        snprintf(out, cap, f > 0 ? ".inf" : "-.inf");
        return;
    }
    if (f == 0) {
        snprintf(out, cap, signbit(f) ? "-0" : "0");
        return;
    }
    char tmp[48];
    int p;
    for (p = 1; p < 9; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, (double)f);
        if (strtof(tmp, NULL) == f)
            break;
    }
    snprintf(tmp, sizeof tmp, "%.*e", p - 1, (double)f);
    /* digits and exponent out of "-d.ddde+XX" */
    char digits[16];
    int nd = 0, neg = tmp[0] == '-';
    const char *q = tmp + neg;
    for (; *q && *q != 'e'; q++)
        if (is_digit(*q))
            digits[nd++] = *q;
    int x = atoi(q + 1);
    char *o = out;
    char *end = out + cap - 1;
#define PUT(ch)                                                                                    \
    do {                                                                                           \
        if (o < end)                                                                               \
            *o++ = (ch);                                                                           \
    } while (0)
    if (neg)
        PUT('-');
    if (x < -4 || x >= 6) {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (int i = 1; i < nd; i++)
                PUT(digits[i]);
        }
        PUT('e');
        PUT(x < 0 ? '-' : '+');
        int ax = x < 0 ? -x : x;
        if (ax >= 100)
            PUT((char)('0' + ax / 100));
        PUT((char)('0' + ax / 10 % 10));
        PUT((char)('0' + ax % 10));
    } else {
        int dp = x + 1;
        if (dp <= 0) {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -dp; i++)
                PUT('0');
            for (int i = 0; i < nd; i++)
                PUT(digits[i]);
        } else {
            for (int i = 0; i < dp || i < nd; i++) {
                if (i == dp)
                    PUT('.');
                PUT(i < nd ? digits[i] : '0');
            }
        }
    }
#undef PUT
    *o = '\0';
}

/* Push a mapping key as the string YAML->JSON conversion makes of it. */
static int push_key(dctx *c, node *k)
{
    lua_State *L = c->L;
    if (count_node(c, k) != 0)
        return -1;
    node *target = k;
    if (k->kind == N_ALIAS) {
        if (enter_alias(c, k) != 0)
            return -1;
        target = k->u.al.target;
        int rc = count_node(c, target);
        leave_alias(c, k);
        if (rc != 0)
            return -1;
    }
    if (target->kind != N_SCALAR)
        return fail_node(c, k, "invalid map key: a %s",
                         target->kind == N_MAP ? "mapping" : "sequence");
    if (target->tag == T_BINARY)
        return push_binary(c, target);
    resolved r;
    if (scalar_value(c, target, &r) != 0)
        return -1;
    char buf[64];
    switch (r.kind) {
    case R_NULL:
        return fail_node(c, k, "invalid map key: null");
    case R_BOOL:
        lua_pushstring(L, r.b ? "true" : "false");
        return 0;
    case R_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)r.i);
        lua_pushstring(L, buf);
        return 0;
    case R_UINT:
        return fail_node(c, k, "unsupported map key: %llu does not fit in int64",
                         (unsigned long long)r.u);
    case R_FLOAT:
        go_float32_g(r.f, buf, sizeof buf);
        for (char *p = buf; *p; p++)
            if (*p == ',') /* a decimal comma from LC_NUMERIC */
                *p = '.';
        lua_pushstring(L, buf);
        return 0;
    default:
        lua_pushlstring(L, target->u.sc.s, target->u.sc.len);
        return 0;
    }
}

static int is_merge_key(const node *k)
{
    return k->kind == N_SCALAR && k->u.sc.len == 2 && memcmp(k->u.sc.s, "<<", 2) == 0 &&
           ((k->flags & F_PLAIN) || k->tag == T_MERGE);
}

static int fill_map(dctx *c, node *m, int t);

/* One mapping (or alias to one) merged into the table at t. */
static int merge_one(dctx *c, node *v, int t)
{
    if (count_node(c, v) != 0)
        return -1;
    if (v->kind == N_MAP)
        return fill_map(c, v, t);
    /* an alias to a mapping (checked by the caller) */
    if (enter_alias(c, v) != 0)
        return -1;
    int rc = count_node(c, v->u.al.target);
    if (rc == 0)
        rc = fill_map(c, v->u.al.target, t);
    leave_alias(c, v);
    return rc;
}

/* `<<: value` as go-yaml v2 merges it: into the table as it is so far, so
 * keys written after the merge win and keys written before it are
 * overwritten; in a list of maps the earlier maps win. */
static int merge_into(dctx *c, node *v, int t)
{
    static const char want_map[] = "map merge requires map or sequence of maps as the value";
    if (v->kind == N_MAP)
        return merge_one(c, v, t);
    if (v->kind == N_ALIAS) {
        if (v->u.al.target->kind != N_MAP)
            return fail_node(c, v, want_map);
        return merge_one(c, v, t);
    }
    if (v->kind != N_SEQ)
        return fail_node(c, v, want_map);
    uint32_t n = v->u.kids.count;
    node **items = NULL;
    node *small[16];
    items = n <= 16 ? small : malloc(n * sizeof *items);
    if (items == NULL)
        return fail_nomem(c);
    uint32_t i = 0;
    for (node *e = v->u.kids.first; e; e = e->next)
        items[i++] = e;
    int rc = 0;
    for (i = n; i-- > 0 && rc == 0;) {
        node *e = items[i];
        if (!(e->kind == N_MAP || (e->kind == N_ALIAS && e->u.al.target->kind == N_MAP)))
            rc = fail_node(c, e, want_map);
        else
            rc = merge_one(c, e, t);
    }
    if (items != small)
        free(items);
    return rc;
}

static int fill_map(dctx *c, node *m, int t)
{
    lua_State *L = c->L;
    for (node *k = m->u.kids.first; k && k->next; k = k->next->next) {
        node *v = k->next;
        if (is_merge_key(k)) {
            if (merge_into(c, v, t) != 0)
                return -1;
            continue;
        }
        if (push_key(c, k) != 0)
            return -1;
        if (push_node(c, v) != 0)
            return -1;
        if (c->omit_null && lua_type(L, -1) == LUA_TLIGHTUSERDATA &&
            lua_touserdata(L, -1) == NULL) {
            lua_pop(L, 1);
            lua_pushnil(L); /* also drops a value merged in before */
        }
        lua_rawset(L, t);
    }
    return 0;
}

static int push_node(dctx *c, node *n)
{
    lua_State *L = c->L;
    if (count_node(c, n) != 0)
        return -1;
    switch (n->kind) {
    case N_SCALAR:
        return push_scalar(c, n);
    case N_ALIAS: {
        if (enter_alias(c, n) != 0)
            return -1;
        int rc = push_node(c, n->u.al.target);
        leave_alias(c, n);
        return rc;
    }
    default:
        break;
    }
    if (c->cdepth >= c->max_depth)
        return fail_node(c, c->alias_root ? c->alias_root : n,
                         "nesting deeper than %d levels (max_depth)", c->max_depth);
    luaL_checkstack(L, 6, "kubelua.yaml: nesting too deep");
    c->cdepth++;
    int rc = 0;
    if (n->kind == N_SEQ) {
        lua_createtable(L, (int)n->u.kids.count, 0);
        lua_pushvalue(L, c->array_mt);
        lua_setmetatable(L, -2);
        int i = 1;
        for (node *e = n->u.kids.first; e && rc == 0; e = e->next) {
            rc = push_node(c, e);
            if (rc == 0)
                lua_rawseti(L, -2, i++);
        }
    } else {
        lua_createtable(L, 0, (int)(n->u.kids.count / 2));
        rc = fill_map(c, n, lua_gettop(L));
    }
    c->cdepth--;
    return rc;
}

/* A JSON document (it starts with '{' or '[', kubelet's own test for JSON)
 * may spell characters beyond the BMP as surrogate pairs ("\ud83d\ude00"),
 * which YAML's double-quoted escapes do not accept. Rewrite each pair as
 * "\U0001F600" in a copy; returns the copy or NULL when none is needed. */
static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int ch = (unsigned char)s[i], d;
        if (is_digit(ch))
            d = ch - '0';
        else if (lower(ch) >= 'a' && lower(ch) <= 'f')
            d = lower(ch) - 'a' + 10;
        else
            return 0;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 1;
}

static int surrogate_pair_at(const char *s, size_t i, size_t n, unsigned *cp)
{
    unsigned hi, lo;
    if (i + 12 > n || s[i + 1] != 'u' || s[i + 6] != '\\' || s[i + 7] != 'u')
        return 0;
    if (!hex4(s + i + 2, &hi) || !hex4(s + i + 8, &lo))
        return 0;
    if (hi < 0xD800 || hi > 0xDBFF || lo < 0xDC00 || lo > 0xDFFF)
        return 0;
    *cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
    return 1;
}

static char *json_surrogates(const char *s, size_t n, size_t *out_len, int *nomem)
{
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
        i++;
    if (i == n || (s[i] != '{' && s[i] != '['))
        return NULL;
    char *out = NULL;
    size_t o = 0;
    for (int pass = 0; pass < 2; pass++) {
        int in_str = 0, found = 0;
        size_t from = 0;
        for (size_t j = i; j < n; j++) {
            char ch = s[j];
            unsigned cp;
            if (!in_str) {
                in_str = ch == '"';
                continue;
            }
            if (ch == '"') {
                in_str = 0;
            } else if (ch == '\\') {
                if (surrogate_pair_at(s, j, n, &cp)) {
                    found = 1;
                    if (out) {
                        memcpy(out + o, s + from, j - from);
                        o += j - from;
                        o += (size_t)snprintf(out + o, 11, "\\U%08X", cp);
                        from = j + 12;
                    }
                    j += 11;
                } else {
                    j++;
                }
            }
        }
        if (!found)
            return NULL;
        if (out) {
            memcpy(out + o, s + from, n - from);
            o += n - from;
            *out_len = o;
            return out;
        }
        out = malloc(n + 1);
        if (out == NULL) {
            *nomem = 1;
            return NULL;
        }
    }
    return NULL;
}

static int check_limit(lua_State *L, int idx, const char *what, long lo, long hi)
{
    lua_Number v = luaL_checknumber(L, idx);
    if (v != floor(v) || v < (lua_Number)lo || v > (lua_Number)hi)
        luaL_error(L, "kubelua.yaml: %s must be an integer from %ld to %ld", what, lo, hi);
    return (int)v;
}

/* decode(s, all, name, max_size, max_depth, max_alias_nodes, omit_null)
 *   -> value | array of documents, or nil, "YAML: name:line:col: why", "YAML" */
static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int all = lua_toboolean(L, 2);
    const char *name = luaL_optstring(L, 3, "<string>");
    lua_Number max_size = luaL_checknumber(L, 4);
    int max_depth = check_limit(L, 5, "max_depth", 1, 1000);
    lua_Number max_alias = luaL_checknumber(L, 6);
    int omit_null = lua_toboolean(L, 7);
    lua_settop(L, 7);

    if ((lua_Number)len > max_size) {
        lua_pushnil(L);
        lua_pushfstring(L, "YAML: %s: input is %f bytes, more than the limit of %f (max_size)",
                        name, (lua_Number)len, max_size);
        lua_pushliteral(L, "YAML");
        return 3;
    }

    dctx *c = new_context(L, sizeof *c, dctx_gc); /* 8 */
    lua_pushvalue(L, UV_ARRAY_MT);                /* 9 */
    c->array_mt = 9;
    c->L = L;
    c->name = name;
    c->max_depth = max_depth;
    c->max_alias = max_alias > 1e15 ? (long)1e15 : (long)max_alias;
    c->omit_null = omit_null;
    c->stack = malloc((size_t)max_depth * sizeof *c->stack);
    if (c->stack == NULL)
        return luaL_error(L, "kubelua.yaml: out of memory");
    if (!yaml_parser_initialize(&c->parser))
        return luaL_error(L, "kubelua.yaml: out of memory");
    c->parser_live = 1;

    int nomem = 0;
    size_t fixed_len = 0;
    c->input_copy = json_surrogates(s, len, &fixed_len, &nomem);
    if (nomem)
        return luaL_error(L, "kubelua.yaml: out of memory");
    if (c->input_copy)
        yaml_parser_set_input_string(&c->parser, (const unsigned char *)c->input_copy, fixed_len);
    else
        yaml_parser_set_input_string(&c->parser, (const unsigned char *)s, len);

    int ndocs = 0;
    if (all) {
        lua_createtable(L, 1, 0); /* 10 */
        lua_pushvalue(L, c->array_mt);
        lua_setmetatable(L, -2);
    }
    for (;;) {
        int rc = read_document(c);
        if (rc < 0)
            goto error;
        if (rc == 0)
            break;
        if (c->root == NULL) /* cannot happen: libyaml gives an empty scalar */
            lua_pushlightuserdata(L, NULL);
        else if (push_node(c, c->root) != 0)
            goto error;
        ndocs++;
        if (!all)
            break;
        lua_rawseti(L, 10, ndocs);
        arena_reset(c);
    }
    dctx_release(c);
    if (!all && ndocs == 0)
        lua_pushlightuserdata(L, NULL); /* an empty stream is one null document */
    return 1;
error:
    lua_pushnil(L);
    lua_pushfstring(L, "YAML: %s", c->err);
    lua_pushliteral(L, "YAML");
    dctx_release(c);
    return 3;
}

/* read_file(path, max_size) -> contents | nil, "CODE: path: why", "CODE"
 * The size is checked before anything is read, and again while reading (a
 * file may grow, or report no size). */
static int io_fail(lua_State *L, const char *path, int err)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s: %s", uv_err_name(-err), path, uv_strerror(-err));
    lua_pushstring(L, uv_err_name(-err));
    return 3;
}

/* (lua_pushfstring's %f is "%.14g": integers print as such) */
static int too_big(lua_State *L, const char *path, double size, double max, int exact)
{
    lua_pushnil(L);
    if (exact)
        lua_pushfstring(L, "YAML: %s: file is %f bytes, more than the limit of %f (max_size)", path,
                        size, max);
    else
        lua_pushfstring(L, "YAML: %s: file is more than the limit of %f bytes (max_size)", path,
                        max);
    lua_pushliteral(L, "YAML");
    return 3;
}

static int l_read_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Number maxn = luaL_checknumber(L, 2);
    size_t max = maxn > 1e12 ? (size_t)1e12 : (size_t)maxn;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return io_fail(L, path, errno);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return io_fail(L, path, e);
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return io_fail(L, path, EISDIR);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        lua_pushnil(L);
        lua_pushfstring(L, "EINVAL: %s: not a regular file", path);
        lua_pushliteral(L, "EINVAL");
        return 3;
    }
    if ((size_t)st.st_size > max) {
        close(fd);
        return too_big(L, path, (double)st.st_size, (double)max, 1);
    }
    size_t cap = (size_t)st.st_size + 1, used = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return luaL_error(L, "kubelua.yaml: out of memory");
    }
    for (;;) {
        if (used == cap) {
            if (cap > max) { /* read max + 1 bytes: too big */
                free(buf);
                close(fd);
                return too_big(L, path, 0, (double)max, 0);
            }
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                free(buf);
                close(fd);
                return luaL_error(L, "kubelua.yaml: out of memory");
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + used, cap - used);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return io_fail(L, path, e);
        }
        if (r == 0)
            break;
        used += (size_t)r;
    }
    close(fd);
    if (used > max) {
        free(buf);
        return too_big(L, path, 0, (double)max, 0);
    }
    lua_pushlstring(L, buf, used);
    free(buf);
    return 1;
}

/* ================================================================ encode */

typedef struct {
    yaml_emitter_t em;
    int em_live;
    char *buf;
    size_t len, cap;
    int nomem;
} ectx;

typedef struct {
    const char *s; /* the key as written */
    size_t len;
    int kind; /* LUA_TSTRING, LUA_TNUMBER, LUA_TBOOLEAN */
    double num;
} ekey;

typedef struct {
    const char *key; /* NULL in an array */
    size_t len;
    long index;
} epath;

typedef struct {
    lua_State *L;
    ectx *e;
    int array_mt;
    int visiting; /* table: the tables on the current path */
    int max_depth;
    int depth;
    epath path[]; /* where we are, for error messages */
} enc;

static int ectx_gc(lua_State *L)
{
    ectx *e = lua_touserdata(L, 1);
    if (e->em_live) {
        yaml_emitter_delete(&e->em);
        e->em_live = 0;
    }
    free(e->buf);
    e->buf = NULL;
    return 0;
}

static int on_write(void *data, unsigned char *buffer, size_t size)
{
    ectx *e = data;
    if (e->len + size > e->cap) {
        size_t cap = e->cap ? e->cap : 1024;
        while (cap < e->len + size)
            cap *= 2;
        char *p = realloc(e->buf, cap);
        if (p == NULL) {
            e->nomem = 1;
            return 0;
        }
        e->buf = p;
        e->cap = cap;
    }
    memcpy(e->buf + e->len, buffer, size);
    e->len += size;
    return 1;
}

static const char *enc_path(enc *E, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < E->depth && o < cap; i++) {
        const epath *p = &E->path[i];
        int n;
        if (p->key)
            n = snprintf(buf + o, cap - o, ".%.*s", (int)(p->len > 40 ? 40 : p->len), p->key);
        else
            n = snprintf(buf + o, cap - o, "[%ld]", p->index);
        if (n < 0)
            break;
        o += (size_t)n;
    }
    return o ? buf : "the top level";
}

static void enc_error(enc *E, const char *fmt, ...)
{
    char msg[256], path[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    luaL_error(E->L, "kubelua.yaml.encode: %s (at %s)", msg, enc_path(E, path, sizeof path));
}

static void emit(enc *E, yaml_event_t *ev)
{
    if (!yaml_emitter_emit(&E->e->em, ev)) {
        if (E->e->nomem)
            luaL_error(E->L, "kubelua.yaml.encode: out of memory");
        luaL_error(E->L, "kubelua.yaml.encode: %s",
                   E->e->em.problem ? E->e->em.problem : "emitter error");
    }
}

static void emit_scalar(enc *E, const char *tag, const char *s, size_t len, int implicit,
                        yaml_scalar_style_t style)
{
    yaml_event_t ev;
    if (!yaml_scalar_event_initialize(&ev, NULL, (yaml_char_t *)tag, (yaml_char_t *)s, (int)len,
                                      implicit, implicit, style))
        luaL_error(E->L, "kubelua.yaml.encode: out of memory");
    emit(E, &ev);
}

static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + k >= n)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* ^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$ : YAML 1.1 base 60,
 * which go-yaml quotes on output for other parsers' sake. */
static int base60(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        i++;
    if (i >= n || !is_digit(s[i]))
        return 0;
    while (i < n && (is_digit(s[i]) || s[i] == '_'))
        i++;
    int groups = 0;
    while (i < n && s[i] == ':') {
        i++;
        size_t d = i;
        while (i < n && is_digit(s[i]) && i - d < 2)
            i++;
        if (i == d || (i - d == 2 && s[d] > '5'))
            return 0;
        groups++;
    }
    if (!groups)
        return 0;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && (is_digit(s[i]) || s[i] == '_'))
            i++;
    }
    return i == n;
}

/* Would this string read back as something else when written plain? */
static int needs_quotes(const char *s, size_t n)
{
    resolved r;
    resolve(s, n, 1, &r);
    if (r.kind != R_STR)
        return 1;
    if (n == 2 && s[0] == '<' && s[1] == '<')
        return 1;
    if (n >= 5 && is_digit(s[0]) && is_digit(s[1]) && is_digit(s[2]) && is_digit(s[3]) &&
        s[4] == '-')
        return 1; /* date-like: a timestamp to other YAML readers */
    return base60(s, n);
}

static void emit_string(enc *E, const char *s, size_t n)
{
    if (!valid_utf8((const unsigned char *)s, n)) {
        /* bytes that are not UTF-8: !!binary, as go-yaml does */
        static const char tbl[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        luaL_Buffer b;
        luaL_buffinit(E->L, &b);
        for (size_t i = 0; i < n; i += 3) {
            uint32_t v = (uint32_t)(unsigned char)s[i] << 16;
            if (i + 1 < n)
                v |= (uint32_t)(unsigned char)s[i + 1] << 8;
            if (i + 2 < n)
                v |= (unsigned char)s[i + 2];
            luaL_addchar(&b, tbl[(v >> 18) & 63]);
            luaL_addchar(&b, tbl[(v >> 12) & 63]);
            luaL_addchar(&b, i + 1 < n ? tbl[(v >> 6) & 63] : '=');
            luaL_addchar(&b, i + 2 < n ? tbl[v & 63] : '=');
            if ((i / 3 + 1) % 18 == 0 && i + 3 < n)
                luaL_addchar(&b, '\n');
        }
        luaL_pushresult(&b);
        size_t blen;
        const char *bs = lua_tolstring(E->L, -1, &blen);
        emit_scalar(E, "tag:yaml.org,2002:binary", bs, blen, 0,
                    n > 54 ? YAML_LITERAL_SCALAR_STYLE : YAML_PLAIN_SCALAR_STYLE);
        lua_pop(E->L, 1);
        return;
    }
    yaml_scalar_style_t style = YAML_ANY_SCALAR_STYLE;
    if (needs_quotes(s, n))
        style = YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    else if (memchr(s, '\n', n) != NULL)
        style = YAML_LITERAL_SCALAR_STYLE;
    emit_scalar(E, NULL, s, n, 1, style);
}

/* A number as YAML text: integers exactly, others in the fewest digits
 * that read back to the same double. */
static size_t format_number(double v, char *buf, size_t cap)
{
    if (isnan(v))
        return (size_t)snprintf(buf, cap, ".nan");
    if (isinf(v))
        return (size_t)snprintf(buf, cap, v > 0 ? ".inf" : "-.inf");
    if (v == floor(v) && fabs(v) <= 9007199254740992.0)
        return (size_t)snprintf(buf, cap, "%lld", (long long)v);
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    for (char *p = buf; *p; p++)
        if (*p == ',')
            *p = '.';
    return (size_t)n;
}

static void encode_value(enc *E, int idx);

static int is_array_mt(enc *E, int idx)
{
    if (!lua_getmetatable(E->L, idx))
        return 0;
    int yes = lua_rawequal(E->L, -1, E->array_mt);
    lua_pop(E->L, 1);
    return yes;
}

/* 1: array of n items; 0: map. An empty table is a map unless marked. */
static int array_shape(enc *E, int idx, size_t *n)
{
    lua_State *L = E->L;
    int marked = is_array_mt(E, idx);
    size_t count = 0;
    double max = 0;
    int ints = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        if (lua_type(L, -1) == LUA_TNUMBER) {
            double k = lua_tonumber(L, -1);
            if (k >= 1 && k == floor(k)) {
                if (k > max)
                    max = k;
                continue;
            }
        }
        ints = 0;
    }
    *n = count;
    if (marked) {
        if (!ints || max != (double)count)
            enc_error(E, "a table marked as an array has keys other than 1..n");
        return 1;
    }
    return count > 0 && ints && max == (double)count;
}

static int key_cmp(const void *a, const void *b)
{
    const ekey *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c != 0)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static void encode_map(enc *E, int idx)
{
    lua_State *L = E->L;
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
    }
    ekey *keys = lua_newuserdata(L, (count ? count : 1) * sizeof *keys);
    int keys_idx = lua_gettop(L);
    lua_createtable(L, (int)count, 0); /* keeps number keys' text alive */
    int texts = lua_gettop(L);
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        ekey *k = &keys[i++];
        k->kind = lua_type(L, -1);
        if (k->kind == LUA_TSTRING) {
            k->s = lua_tolstring(L, -1, &k->len);
        } else if (k->kind == LUA_TNUMBER) {
            char buf[64];
            k->num = lua_tonumber(L, -1);
            size_t n = format_number(k->num, buf, sizeof buf);
            lua_pushlstring(L, buf, n);
            k->s = lua_tolstring(L, -1, &k->len);
            lua_rawseti(L, texts, (int)i);
        } else if (k->kind == LUA_TBOOLEAN) {
            k->num = lua_toboolean(L, -1);
            k->s = k->num ? "true" : "false";
            k->len = strlen(k->s);
        } else {
            enc_error(E, "a table key cannot be a %s", lua_typename(L, k->kind));
        }
    }
    qsort(keys, count, sizeof *keys, key_cmp);
    for (i = 1; i < count; i++)
        if (key_cmp(&keys[i - 1], &keys[i]) == 0)
            enc_error(E, "two keys are both written as \"%.*s\"",
                      (int)(keys[i].len > 40 ? 40 : keys[i].len), keys[i].s);

    yaml_event_t ev;
    yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
    emit(E, &ev);
    for (i = 0; i < count; i++) {
        ekey *k = &keys[i];
        if (k->kind == LUA_TSTRING) {
            emit_string(E, k->s, k->len);
            lua_pushlstring(L, k->s, k->len);
        } else {
            emit_scalar(E, NULL, k->s, k->len, 1, YAML_PLAIN_SCALAR_STYLE);
            if (k->kind == LUA_TNUMBER)
                lua_pushnumber(L, k->num);
            else
                lua_pushboolean(L, (int)k->num);
        }
        lua_rawget(L, idx);
        E->path[E->depth - 1].key = k->s;
        E->path[E->depth - 1].len = k->len;
        encode_value(E, lua_gettop(L));
        lua_pop(L, 1);
    }
    yaml_mapping_end_event_initialize(&ev);
    emit(E, &ev);
    lua_settop(L, keys_idx - 1);
}

static void encode_table(enc *E, int idx)
{
    lua_State *L = E->L;
    if (E->depth >= E->max_depth)
        enc_error(E, "tables nest deeper than %d levels (max_depth)", E->max_depth);
    lua_pushvalue(L, idx);
    lua_rawget(L, E->visiting);
    if (lua_toboolean(L, -1))
        enc_error(E, "a table contains itself");
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, E->visiting);
    E->depth++;
    E->path[E->depth - 1].key = NULL;
    E->path[E->depth - 1].index = 0;

    size_t n;
    yaml_event_t ev;
    if (array_shape(E, idx, &n)) {
        yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE);
        emit(E, &ev);
        for (size_t i = 1; i <= n; i++) {
            E->path[E->depth - 1].key = NULL;
            E->path[E->depth - 1].index = (long)i;
            lua_rawgeti(L, idx, (int)i);
            encode_value(E, lua_gettop(L));
            lua_pop(L, 1);
        }
        yaml_sequence_end_event_initialize(&ev);
        emit(E, &ev);
    } else {
        encode_map(E, idx);
    }
    E->depth--;
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, E->visiting);
}

static void encode_value(enc *E, int idx)
{
    lua_State *L = E->L;
    char buf[64];
    luaL_checkstack(L, 8, "kubelua.yaml.encode: nesting too deep");
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        emit_scalar(E, NULL, "null", 4, 1, YAML_PLAIN_SCALAR_STYLE);
        return;
    case LUA_TBOOLEAN:
        emit_scalar(E, NULL, lua_toboolean(L, idx) ? "true" : "false",
                    lua_toboolean(L, idx) ? 4 : 5, 1, YAML_PLAIN_SCALAR_STYLE);
        return;
    case LUA_TNUMBER: {
        size_t n = format_number(lua_tonumber(L, idx), buf, sizeof buf);
        emit_scalar(E, NULL, buf, n, 1, YAML_PLAIN_SCALAR_STYLE);
        return;
    }
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        emit_string(E, s, n);
        return;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            emit_scalar(E, NULL, "null", 4, 1, YAML_PLAIN_SCALAR_STYLE);
            return;
        }
        break;
    case LUA_TTABLE:
        encode_table(E, idx);
        return;
    case LUA_TCDATA: {
        lua_pushvalue(L, UV_INT_TEXT);
        lua_pushvalue(L, idx);
        lua_call(L, 1, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t n;
            const char *s = lua_tolstring(L, -1, &n);
            emit_scalar(E, NULL, s, n, 1, YAML_PLAIN_SCALAR_STYLE);
            lua_pop(L, 1);
            return;
        }
        lua_pop(L, 1);
        enc_error(E, "cannot encode a cdata that is not an int64_t or uint64_t");
        return;
    }
    default:
        break;
    }
    enc_error(E, "cannot encode a %s", luaL_typename(L, idx));
}

/* encode(value, all, indent, max_depth) -> string; `all`: value is an array
 * of documents, each written after "---". Throws on values YAML cannot
 * hold (functions, cycles, ...): those are programming mistakes. */
static int l_encode(lua_State *L)
{
    int all = lua_toboolean(L, 2);
    int indent = check_limit(L, 3, "indent", 2, 9);
    int max_depth = check_limit(L, 4, "max_depth", 1, 1000);
    lua_settop(L, 1);
    if (all)
        luaL_checktype(L, 1, LUA_TTABLE);

    ectx *e = new_context(L, sizeof *e, ectx_gc); /* 2 */
    lua_pushvalue(L, UV_ARRAY_MT);                /* 3 */
    lua_newtable(L);                              /* 4: visiting */
    enc *E = lua_newuserdata(L, sizeof *E + (size_t)max_depth * sizeof E->path[0]); /* 5 */
    E->L = L;
    E->e = e;
    E->array_mt = 3;
    E->visiting = 4;
    E->max_depth = max_depth;
    E->depth = 0;

    if (!yaml_emitter_initialize(&e->em))
        return luaL_error(L, "kubelua.yaml.encode: out of memory");
    e->em_live = 1;
    yaml_emitter_set_output(&e->em, on_write, e);
    yaml_emitter_set_unicode(&e->em, 1);
    yaml_emitter_set_width(&e->em, -1);
    yaml_emitter_set_indent(&e->em, indent);

    yaml_event_t ev;
    yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
    emit(E, &ev);
    size_t ndocs = all ? lua_objlen(L, 1) : 1;
    for (size_t i = 1; i <= ndocs; i++) {
        yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, !all);
        emit(E, &ev);
        if (all) {
            lua_rawgeti(L, 1, (int)i);
            encode_value(E, lua_gettop(L));
            lua_pop(L, 1);
        } else {
            encode_value(E, 1);
        }
        yaml_document_end_event_initialize(&ev, 1);
        emit(E, &ev);
    }
    yaml_stream_end_event_initialize(&ev);
    emit(E, &ev);
    if (!yaml_emitter_flush(&e->em))
        return luaL_error(L, "kubelua.yaml.encode: out of memory");
    lua_pushlstring(L, e->buf ? e->buf : "", e->len);
    return 1;
}

/* ================================================================= open */

int luaopen_kubelua_yaml_core(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"decode", l_decode},
        {"read_file", l_read_file},
        {"encode", l_encode},
        {NULL, NULL},
    };
    lua_newtable(L); /* module */
    int mod = lua_gettop(L);
    lua_newtable(L); /* the array marker */
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__name");
    if (luaL_loadbuffer(L, BOX_CODE, sizeof BOX_CODE - 1, "=kubelua.yaml.box") != 0 ||
        lua_pcall(L, 0, 5, 0) != 0)
        return luaL_error(L, "kubelua.yaml: cannot set up 64-bit integers: %s",
                          lua_tostring(L, -1));
    /* mod, array_mt, si, su, box_i64, box_u64, int_text */
    int si = mod + 2, su = mod + 3;
    box_cells *cells = lua_newuserdata(L, sizeof *cells);
    cells->si = (int64_t *)lua_topointer(L, si);
    cells->su = (uint64_t *)lua_topointer(L, su);
    lua_createtable(L, 2, 0); /* keeps the cells alive */
    lua_pushvalue(L, si);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, su);
    lua_rawseti(L, -2, 2);
    /* in UV_* order */
    const int order[N_UPVALUES] = {mod + 1, mod + 7, mod + 4, mod + 5, mod + 6, mod + 8};
    for (const luaL_Reg *f = fns; f->name; f++) {
        for (int i = 0; i < N_UPVALUES; i++)
            lua_pushvalue(L, order[i]);
        lua_pushcclosure(L, f->func, N_UPVALUES);
        lua_setfield(L, mod, f->name);
    }
    lua_pushvalue(L, mod + 1);
    lua_setfield(L, mod, "array_mt");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, mod, "null");
    lua_settop(L, mod);
    return 1;
}
