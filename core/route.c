/* route.c: pattern compilation and most-specific matching (see route.h).
 * Tables hold few routes (tens), so matching tries each one and keeps the
 * best score: a linear scan beats a trie at this size and stays obvious. */
#include "core/route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum seg_kind { SEG_LITERAL, SEG_PARAM, SEG_SPLAT };

typedef struct route_seg {
    uint8_t kind;
    char *text; /* literal text, or the parameter name */
    size_t len;
} route_seg;

typedef struct route {
    char method[16];
    char *pattern;
    route_seg *segs;
    int nsegs;
    intptr_t handler;
} route;

struct route_table {
    route *routes;
    size_t count, cap;
};

route_table *route_table_new(void)
{
    return calloc(1, sizeof(route_table));
}

static void route_destroy(route *r)
{
    for (int i = 0; i < r->nsegs; i++)
        free(r->segs[i].text);
    free(r->segs);
    free(r->pattern);
}

void route_table_free(route_table *t, void (*release)(intptr_t, void *), void *ud)
{
    if (!t) return;
    for (size_t i = 0; i < t->count; i++) {
        if (release) release(t->routes[i].handler, ud);
        route_destroy(&t->routes[i]);
    }
    free(t->routes);
    free(t);
}

size_t route_count(const route_table *t)
{
    return t->count;
}

static int compile(route *r, const char *pattern, char *err, size_t errlen)
{
    size_t plen = strlen(pattern);
    if (plen == 0 || pattern[0] != '/') {
        snprintf(err, errlen, "pattern must start with '/': %s", pattern);
        return SL_EINVAL;
    }
    int maxsegs = 1;
    for (size_t i = 0; i < plen; i++)
        maxsegs += pattern[i] == '/';
    r->segs = calloc((size_t)maxsegs, sizeof(route_seg));
    if (!r->segs) return SL_ENOMEM;
    int nparams = 0;
    const char *s = pattern + 1;
    for (;;) {
        const char *slash = strchr(s, '/');
        size_t len = slash ? (size_t)(slash - s) : strlen(s);
        route_seg *seg = &r->segs[r->nsegs];
        if (len == 1 && s[0] == '*') {
            if (slash) {
                snprintf(err, errlen, "'*' must be the last segment: %s", pattern);
                return SL_EINVAL;
            }
            seg->kind = SEG_SPLAT;
            seg->text = strdup("*");
            seg->len = 1;
            nparams++;
        } else if (len > 0 && s[0] == ':') {
            if (len == 1) {
                snprintf(err, errlen, "empty parameter name: %s", pattern);
                return SL_EINVAL;
            }
            seg->kind = SEG_PARAM;
            seg->text = strndup(s + 1, len - 1);
            seg->len = len - 1;
            nparams++;
        } else {
            seg->kind = SEG_LITERAL;
            seg->text = strndup(s, len);
            seg->len = len;
        }
        if (!seg->text) return SL_ENOMEM;
        r->nsegs++;
        if (nparams > ROUTE_MAX_PARAMS) {
            snprintf(err, errlen, "too many parameters: %s", pattern);
            return SL_EINVAL;
        }
        if (!slash) break;
        s = slash + 1;
    }
    return 0;
}

/* True when a and b match exactly the same paths: the same segments, the
 * same literals, parameters and '*' at the same places (names aside). */
static bool same_shape(const route *a, const route *b)
{
    if (a->nsegs != b->nsegs) return false;
    for (int i = 0; i < a->nsegs; i++) {
        const route_seg *x = &a->segs[i], *y = &b->segs[i];
        if (x->kind != y->kind) return false;
        if (x->kind == SEG_LITERAL && (x->len != y->len || memcmp(x->text, y->text, x->len) != 0))
            return false;
    }
    return true;
}

int route_add(route_table *t, const char *method, const char *pattern, intptr_t handler, char *err,
              size_t errlen)
{
    if (strlen(method) == 0 || strlen(method) >= sizeof(((route *)0)->method)) {
        snprintf(err, errlen, "bad method: %s", method);
        return SL_EINVAL;
    }
    for (size_t i = 0; i < t->count; i++) {
        if (strcmp(t->routes[i].method, method) == 0 &&
            strcmp(t->routes[i].pattern, pattern) == 0) {
            snprintf(err, errlen, "duplicate route: %s %s", method, pattern);
            return SL_EINVAL;
        }
    }
    if (t->count == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 8;
        route *nr = realloc(t->routes, ncap * sizeof(route));
        if (!nr) goto oom;
        t->routes = nr;
        t->cap = ncap;
    }
    route *r = &t->routes[t->count];
    memset(r, 0, sizeof(*r));
    strcpy(r->method, method);
    r->handler = handler;
    r->pattern = strdup(pattern);
    if (!r->pattern) goto oom;
    int rc = compile(r, pattern, err, errlen);
    if (rc < 0) {
        if (rc == SL_ENOMEM) snprintf(err, errlen, "out of memory");
        route_destroy(r);
        return rc;
    }
    for (size_t i = 0; i < t->count; i++) {
        if (strcmp(t->routes[i].method, method) != 0 || !same_shape(&t->routes[i], r)) continue;
        /* Same paths, same score: the first always wins (a mistake, such
         * as /a/:id then /a/:name, that would otherwise go unnoticed). */
        snprintf(err, errlen, "route %s %s can never match: %s %s takes the same paths", method,
                 pattern, method, t->routes[i].pattern);
        route_destroy(r);
        return SL_EINVAL;
    }
    t->count++;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return SL_ENOMEM;
}

/* Matches `r` against the path; on success fills params and a score where
 * each segment contributes two bits from the top (3 literal, 2 param, 1
 * splat), so comparing scores compares routes segment by segment. */
static uint64_t score_digit(uint64_t sc, int i, uint64_t kind)
{
    return i < 32 ? sc | (kind << (62 - 2 * i)) : sc;
}

static bool match_route(const route *r, const char *path, size_t plen, route_match *m,
                        uint64_t *score)
{
    size_t pos = 1; /* path[0] is '/' */
    uint64_t sc = 0;
    int np = 0;
    for (int i = 0; i < r->nsegs; i++) {
        const route_seg *seg = &r->segs[i];
        if (seg->kind == SEG_SPLAT) {
            m->params[np].name = seg->text;
            m->params[np].value = path + (pos <= plen ? pos : plen);
            m->params[np].value_len = pos <= plen ? plen - pos : 0;
            np++;
            sc = score_digit(sc, i, 1);
            pos = plen + 1;
            break;
        }
        if (pos > plen) return false; /* path ended before the pattern */
        const char *slash = memchr(path + pos, '/', plen - pos);
        size_t end = slash ? (size_t)(slash - path) : plen;
        size_t len = end - pos;
        if (seg->kind == SEG_LITERAL) {
            if (len != seg->len || memcmp(path + pos, seg->text, len) != 0) return false;
            sc = score_digit(sc, i, 3);
        } else {
            if (len == 0) return false;
            m->params[np].name = seg->text;
            m->params[np].value = path + pos;
            m->params[np].value_len = len;
            np++;
            sc = score_digit(sc, i, 2);
        }
        pos = end + 1;
    }
    if (pos <= plen) return false; /* path has segments the pattern lacks */
    *score = sc;
    m->nparams = np;
    return true;
}

route_result route_find(const route_table *t, const char *method, const char *path, size_t path_len,
                        route_match *m)
{
    const route *best = NULL;
    uint64_t best_score = 0;
    route_match tmp;
    m->allow[0] = '\0';
    if (path_len == 0 || path[0] != '/') return ROUTE_NOT_FOUND;
    bool head = strcmp(method, "HEAD") == 0;
    for (int pass = 0; pass < 2 && !best; pass++) {
        /* Pass 0: the request's own method (and "*"); pass 1: HEAD as GET.
         * The method first: it is cheaper to compare than the path. */
        if (pass == 1 && !head) break;
        const char *want = pass == 0 ? method : "GET";
        for (size_t i = 0; i < t->count; i++) {
            const route *r = &t->routes[i];
            uint64_t score;
            if (strcmp(r->method, "*") != 0 && strcmp(r->method, want) != 0) continue;
            if (!match_route(r, path, path_len, &tmp, &score)) continue;
            if (!best || score > best_score) {
                best = r;
                best_score = score;
                /* Fields, not the whole struct: allow[] and the unused
                 * params need no copy. */
                m->handler = r->handler;
                m->nparams = tmp.nparams;
                memcpy(m->params, tmp.params, sizeof(route_param) * (size_t)tmp.nparams);
            }
        }
    }
    if (best) return ROUTE_FOUND;
    /* No route of this method: a 405 with its Allow list when the path has
     * routes of other methods, else a 404. */
    bool other_method = false;
    for (size_t i = 0; i < t->count; i++) {
        const route *r = &t->routes[i];
        uint64_t score;
        if (!match_route(r, path, path_len, &tmp, &score)) continue;
        other_method = true;
        size_t al = strlen(m->allow);
        if (!strstr(m->allow, r->method) && al + strlen(r->method) + 3 < sizeof(m->allow))
            snprintf(m->allow + al, sizeof(m->allow) - al, "%s%s", al ? ", " : "", r->method);
    }
    return other_method ? ROUTE_NO_METHOD : ROUTE_NOT_FOUND;
}
