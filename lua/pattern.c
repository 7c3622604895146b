/* pattern.c: string.find, string.match, string.gmatch and string.gsub with
 * a matcher whose work is counted.
 *
 * Lua's own matcher runs inside one C call, where the instruction budget's
 * hook never fires: `body:find(".-.-x")` on a 60 KB body spent 14 s of a
 * worker.  This matcher implements the same patterns (Lua 5.4 manual,
 * 6.4.1: classes, sets, the quantifiers * + - ?, anchors, captures and
 * position captures, back-references, %b and %f), the same functions and
 * the same errors, and charges every step it takes (an attempt at a
 * pattern item, one character of a quantifier's scan or of %b) to the
 * running budget as one instruction, checking the budget and the deadline
 * every CHARGE_EVERY steps: a pattern overrun is an ordinary overrun, a
 * 500 for a handler.  It is a backtracking matcher like Lua's, recursive
 * for captures and quantifiers, with the same depth limit.
 *
 * A plain find (no special characters, or `plain`) uses memmem, linear in
 * the subject, where Lua's loop over memchr and memcmp could take the
 * product of the two lengths. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include "lua/internal.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>

#define MAX_CAPTURES 32 /* LUA_MAXCAPTURES */
#define MAX_DEPTH 200   /* nested calls of do_match before "pattern too complex" */
#define CHARGE_EVERY 4096
#define CAP_OPEN (-1)     /* a capture whose ')' has not been met */
#define CAP_POSITION (-2) /* a position capture, () */
#define ESC '%'
#define SPECIALS "^$*+?.([%-"

typedef struct matcher {
    const char *src, *src_end; /* the subject */
    const char *pat_end;
    lua_State *L;
    int depth; /* calls of do_match left */
    int ncap;
    long steps; /* taken since the last charge */
    struct {
        const char *start;
        ptrdiff_t len; /* or CAP_OPEN, CAP_POSITION */
    } cap[MAX_CAPTURES];
} matcher;

static void charge(matcher *m)
{
    long n = m->steps;
    m->steps = 0;
    lx_budget_charge(m->L, n);
}

static inline void step(matcher *m)
{
    if (++m->steps >= CHARGE_EVERY) charge(m);
}

static const char *do_match(matcher *m, const char *s, const char *p);

/* Whether c is in class %cl (cl a letter), or is cl itself otherwise. */
static bool in_class(int c, int cl)
{
    bool in;
    switch (tolower(cl)) {
    case 'a':
        in = isalpha(c);
        break;
    case 'c':
        in = iscntrl(c);
        break;
    case 'd':
        in = isdigit(c);
        break;
    case 'g':
        in = isgraph(c);
        break;
    case 'l':
        in = islower(c);
        break;
    case 'p':
        in = ispunct(c);
        break;
    case 's':
        in = isspace(c);
        break;
    case 'u':
        in = isupper(c);
        break;
    case 'w':
        in = isalnum(c);
        break;
    case 'x':
        in = isxdigit(c);
        break;
    case 'z':
        in = c == 0;
        break; /* deprecated, still Lua 5.4's */
    default:
        return cl == c;
    }
    return isupper(cl) ? !in : in;
}

/* Whether c is in the set [...] from `open` (its '[') to `close` (its ']'). */
static bool in_set(int c, const char *open, const char *close)
{
    const char *p = open + 1;
    bool want = true;
    if (*p == '^') {
        want = false;
        p++;
    }
    for (; p < close; p++) {
        if (*p == ESC) {
            p++;
            if (in_class(c, (unsigned char)*p)) return want;
        } else if (p[1] == '-' && p + 2 < close) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2]) return want;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return want;
        }
    }
    return !want;
}

/* The end of the single-character item that starts at p. */
static const char *item_end(matcher *m, const char *p)
{
    char c = *p++;
    if (c == ESC) {
        if (p >= m->pat_end) luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (c == '[') {
        if (*p == '^') p++;
        /* The first character is the set's even when it is ']'. */
        do {
            if (p >= m->pat_end) luaL_error(m->L, "malformed pattern (missing ']')");
            c = *p++;
            if (c == ESC && p < m->pat_end) p++;
        } while (*p != ']');
        return p + 1;
    }
    return p;
}

/* Whether the subject character at s matches the item [p, ep). */
static bool item_matches(const matcher *m, const char *s, const char *p, const char *ep)
{
    if (s >= m->src_end) return false;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.':
        return true;
    case ESC:
        return in_class(c, (unsigned char)p[1]);
    case '[':
        return in_set(c, p, ep - 1);
    default:
        return (unsigned char)*p == c;
    }
}

/* %bxy at s (p at x). */
static const char *match_balance(matcher *m, const char *s, const char *p)
{
    if (p + 1 >= m->pat_end) luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != p[0]) return NULL;
    char open = p[0], close = p[1];
    int depth = 1;
    while (++s < m->src_end) {
        step(m);
        if (*s == close) {
            if (--depth == 0) return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

/* x* and x+ (after its first x): the longest run first, then shorter. */
static const char *match_longest(matcher *m, const char *s, const char *p, const char *ep)
{
    ptrdiff_t n = 0;
    while (item_matches(m, s + n, p, ep)) {
        step(m);
        n++;
    }
    for (; n >= 0; n--) {
        const char *r = do_match(m, s + n, ep + 1);
        if (r) return r;
    }
    return NULL;
}

/* x-: the shortest run first, then longer. */
static const char *match_shortest(matcher *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *r = do_match(m, s, ep + 1);
        if (r) return r;
        if (!item_matches(m, s, p, ep)) return NULL;
        s++;
    }
}

static const char *open_capture(matcher *m, const char *s, const char *p, ptrdiff_t kind)
{
    if (m->ncap >= MAX_CAPTURES) luaL_error(m->L, "too many captures");
    m->cap[m->ncap].start = s;
    m->cap[m->ncap].len = kind;
    m->ncap++;
    const char *r = do_match(m, s, p);
    if (!r) m->ncap--;
    return r;
}

static const char *close_capture(matcher *m, const char *s, const char *p)
{
    int i = m->ncap - 1;
    while (i >= 0 && m->cap[i].len != CAP_OPEN)
        i--;
    if (i < 0) luaL_error(m->L, "invalid pattern capture");
    m->cap[i].len = s - m->cap[i].start;
    const char *r = do_match(m, s, p);
    if (!r) m->cap[i].len = CAP_OPEN;
    return r;
}

/* %1..%9 at s: the text of that capture again. */
static const char *match_backref(matcher *m, const char *s, int digit)
{
    int i = digit - '1';
    if (i < 0 || i >= m->ncap || m->cap[i].len == CAP_OPEN)
        luaL_error(m->L, "invalid capture index %%%d", i + 1);
    size_t len = (size_t)m->cap[i].len; /* a position capture: huge, never fits */
    if ((size_t)(m->src_end - s) >= len && memcmp(m->cap[i].start, s, len) == 0) return s + len;
    return NULL;
}

/* Matches pattern p at s; returns the end of the match or NULL.  Simple
 * items loop here; captures, quantifiers and ? recurse. */
static const char *do_match(matcher *m, const char *s, const char *p)
{
    if (m->depth-- == 0) luaL_error(m->L, "pattern too complex");
    while (p < m->pat_end) {
        step(m);
        if (*p == '(') {
            s = p[1] == ')' ? open_capture(m, s, p + 2, CAP_POSITION)
                            : open_capture(m, s, p + 1, CAP_OPEN);
            goto done;
        }
        if (*p == ')') {
            s = close_capture(m, s, p + 1);
            goto done;
        }
        if (*p == '$' && p + 1 == m->pat_end) {
            if (s != m->src_end) s = NULL;
            goto done;
        }
        if (*p == ESC && p + 1 < m->pat_end) {
            char k = p[1];
            if (k == 'b') {
                s = match_balance(m, s, p + 2);
                if (!s) goto done;
                p += 4;
                continue;
            }
            if (k == 'f') {
                p += 2;
                if (*p != '[') luaL_error(m->L, "missing '[' after '%%f' in pattern");
                const char *ep = item_end(m, p);
                int before = s == m->src ? '\0' : (unsigned char)s[-1];
                int here = s < m->src_end ? (unsigned char)*s : '\0';
                if (in_set(before, p, ep - 1) || !in_set(here, p, ep - 1)) {
                    s = NULL;
                    goto done;
                }
                p = ep;
                continue;
            }
            if (isdigit((unsigned char)k)) {
                s = match_backref(m, s, (unsigned char)k);
                if (!s) goto done;
                p += 2;
                continue;
            }
        }
        /* A single-character item, maybe quantified. */
        const char *ep = item_end(m, p);
        if (!item_matches(m, s, p, ep)) {
            if (*ep == '*' || *ep == '?' || *ep == '-') { /* zero of them will do */
                p = ep + 1;
                continue;
            }
            s = NULL;
            goto done;
        }
        switch (*ep) {
        case '?': {
            const char *r = do_match(m, s + 1, ep + 1);
            if (r) {
                s = r;
                goto done;
            }
            p = ep + 1;
            continue;
        }
        case '+':
            s = match_longest(m, s + 1, p, ep);
            goto done;
        case '*':
            s = match_longest(m, s, p, ep);
            goto done;
        case '-':
            s = match_shortest(m, s, p, ep);
            goto done;
        default:
            s++;
            p = ep;
            continue;
        }
    }
done:
    m->depth++;
    return s;
}

static void matcher_init(matcher *m, lua_State *L, const char *s, size_t ls, const char *p,
                         size_t lp)
{
    m->L = L;
    m->src = s;
    m->src_end = s + ls;
    m->pat_end = p + lp;
    m->steps = 0;
}

static void matcher_reset(matcher *m)
{
    m->ncap = 0;
    m->depth = MAX_DEPTH;
}

/* Capture i of the match [s, e): pushes a position capture and returns
 * CAP_POSITION, or sets *text and returns its length. */
static ptrdiff_t capture_at(matcher *m, int i, const char *s, const char *e, const char **text)
{
    if (i >= m->ncap) {
        if (i != 0) luaL_error(m->L, "invalid capture index %%%d", i + 1);
        *text = s;
        return e - s;
    }
    ptrdiff_t len = m->cap[i].len;
    *text = m->cap[i].start;
    if (len == CAP_OPEN) luaL_error(m->L, "unfinished capture");
    if (len == CAP_POSITION) lua_pushinteger(m->L, (m->cap[i].start - m->src) + 1);
    return len;
}

static void push_capture(matcher *m, int i, const char *s, const char *e)
{
    const char *text;
    ptrdiff_t len = capture_at(m, i, s, e, &text);
    if (len != CAP_POSITION) lua_pushlstring(m->L, text, (size_t)len);
}

/* Pushes the captures (or the whole match [s, e) when there is none and
 * s is given); returns how many. */
static int push_captures(matcher *m, const char *s, const char *e)
{
    int n = m->ncap == 0 && s ? 1 : m->ncap;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(m, i, s, e);
    return n;
}

/* A 1-based (or negative) init as string.find reads it, made 0-based. */
static size_t start_offset(lua_Integer pos, size_t len)
{
    if (pos > 0) return (size_t)pos - 1;
    if (pos == 0) return 0;
    if (pos < -(lua_Integer)len) return 0;
    return len + (size_t)pos;
}

static bool has_specials(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (strchr(SPECIALS, p[i]) && p[i]) return true;
    return false;
}

static int find_or_match(lua_State *L, bool find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        lx_budget_charge(L, (long)((ls - init) / 16)); /* memmem: linear, and fast */
        const char *at = memmem(s + init, ls - init, p, lp);
        if (!at) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (at - s) + 1);
        lua_pushinteger(L, (lua_Integer)((size_t)(at - s) + lp));
        return 2;
    }
    matcher m;
    const char *s1 = s + init;
    bool anchor = lp > 0 && *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    matcher_init(&m, L, s, ls, p, lp);
    do {
        matcher_reset(&m);
        const char *e = do_match(&m, s1, p);
        if (e) {
            if (!find) return push_captures(&m, s1, e);
            lua_pushinteger(L, (s1 - s) + 1);
            lua_pushinteger(L, e - s);
            return push_captures(&m, NULL, NULL) + 2;
        }
    } while (s1++ < m.src_end && !anchor);
    luaL_pushfail(L);
    return 1;
}

static int l_find(lua_State *L)
{
    return find_or_match(L, true);
}

static int l_match(lua_State *L)
{
    return find_or_match(L, false);
}

typedef struct gmatch_state {
    const char *at;       /* where the next search starts */
    const char *last_end; /* the end of the last match: no empty match there */
    const char *p;
    matcher m;
} gmatch_state;

static int gmatch_next(lua_State *L)
{
    gmatch_state *g = lua_touserdata(L, lua_upvalueindex(3));
    g->m.L = L;
    for (const char *s = g->at; s <= g->m.src_end; s++) {
        matcher_reset(&g->m);
        const char *e = do_match(&g->m, s, g->p);
        if (e && e != g->last_end) {
            g->at = g->last_end = e;
            return push_captures(&g->m, s, e);
        }
    }
    return 0;
}

/* string.gmatch(s, pattern [, init]); '^' is not an anchor here. */
static int l_gmatch(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    lua_settop(L, 2); /* the closure keeps both strings alive */
    gmatch_state *g = lua_newuserdatauv(L, sizeof(gmatch_state), 0);
    if (init > ls) init = ls + 1;
    matcher_init(&g->m, L, s, ls, p, lp);
    g->at = s + init;
    g->last_end = NULL;
    g->p = p;
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

/* Appends the replacement string (argument 3) for the match [s, e). */
static void add_template(matcher *m, luaL_Buffer *b, const char *s, const char *e)
{
    lua_State *L = m->L;
    size_t len;
    const char *t = lua_tolstring(L, 3, &len);
    const char *esc;
    while ((esc = memchr(t, ESC, len)) != NULL) {
        luaL_addlstring(b, t, (size_t)(esc - t));
        char k = esc[1]; /* the string's NUL when ESC ends it */
        if (k == ESC) {
            luaL_addchar(b, ESC);
        } else if (k == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (isdigit((unsigned char)k)) {
            const char *text;
            ptrdiff_t n = capture_at(m, k - '1', s, e, &text);
            if (n == CAP_POSITION)
                luaL_addvalue(b);
            else
                luaL_addlstring(b, text, (size_t)n);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", ESC);
        }
        len -= (size_t)(esc + 2 - t);
        t = esc + 2;
    }
    luaL_addlstring(b, t, len);
}

/* Appends what replaces the match [s, e); returns whether it changed. */
static bool add_replacement(matcher *m, luaL_Buffer *b, const char *s, const char *e, int type)
{
    lua_State *L = m->L;
    if (type == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(m, s, e);
        lua_call(L, n, 1);
    } else if (type == LUA_TTABLE) {
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
    } else {
        add_template(m, b, s, e);
        return true;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s)); /* keep the text */
        return false;
    }
    if (!lua_isstring(L, -1))
        return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return true;
}

/* string.gsub(s, pattern, repl [, n]) */
static int l_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    const char *last_end = NULL;
    int type = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(L,
                     type == LUA_TNUMBER || type == LUA_TSTRING || type == LUA_TFUNCTION ||
                         type == LUA_TTABLE,
                     3, "string/function/table");
    bool anchor = lp > 0 && *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    matcher m;
    matcher_init(&m, L, src, ls, p, lp);
    lua_Integer n = 0;
    bool changed = false;
    while (n < max) {
        matcher_reset(&m);
        const char *e = do_match(&m, src, p);
        if (e && e != last_end) {
            n++;
            changed |= add_replacement(&m, &b, src, e, type);
            src = last_end = e;
        } else if (src < m.src_end) {
            step(&m);
            luaL_addchar(&b, *src++);
        } else {
            break;
        }
        if (anchor) break;
    }
    if (!changed) {
        lua_pushvalue(L, 1); /* the subject as it was */
    } else {
        luaL_addlstring(&b, src, (size_t)(m.src_end - src));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

void lx_open_patterns(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub}, {NULL, NULL},
    };
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "string") == LUA_TTABLE) luaL_setfuncs(L, fns, 0);
    lua_pop(L, 2);
}
