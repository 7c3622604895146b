/* route.h: the router that maps (method, path) to a handler.
 *
 * Patterns are split into segments once, when added: a literal segment, a
 * `:name` segment that matches one non-empty path segment, or a final `*`
 * that matches the rest of the path (possibly empty).  Matching is
 * independent of registration order: the most specific route wins, comparing
 * segment by segment, literal before :param before *.  The table stores an
 * opaque handler value (the Lua layer keeps a registry reference there), so
 * the router knows nothing of Lua. */
#ifndef SLUICE_ROUTE_H
#define SLUICE_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define ROUTE_MAX_PARAMS 16

typedef struct route_table route_table;

typedef struct route_param {
    const char *name;  /* NUL-terminated, owned by the table ("*" for a splat) */
    const char *value; /* points into the matched path, not decoded */
    size_t value_len;
} route_param;

typedef struct route_match {
    intptr_t handler;
    int nparams;
    route_param params[ROUTE_MAX_PARAMS];
    char allow[96]; /* on ROUTE_NO_METHOD: the methods that would match */
} route_match;

typedef enum route_result { ROUTE_FOUND, ROUTE_NOT_FOUND, ROUTE_NO_METHOD } route_result;

/* A new, empty table; NULL when out of memory. */
route_table *route_table_new(void);

/* Frees the table.  `release` (may be NULL) is called with each handler so
 * the owner can drop its references. */
void route_table_free(route_table *t, void (*release)(intptr_t handler, void *ud), void *ud);

/* Adds a route.  `method` is an HTTP method name in capitals or "*" (any);
 * `pattern` starts with '/'.  Returns 0, or with a message in err
 * SL_EINVAL for a malformed pattern (empty :name, `*` not last, too many
 * params), a duplicate of an existing (method, pattern), or a pattern
 * that can never match because an earlier route of the same method takes
 * the same paths (/a/:id, then /a/:name); SL_ENOMEM. */
int route_add(route_table *t, const char *method, const char *pattern, intptr_t handler, char *err,
              size_t errlen);

/* Finds the best route for `path` (the URL path without the query, not
 * decoded).  HEAD falls back to GET routes.  On ROUTE_FOUND `m` holds the
 * handler and parameters (valid while `path` and the table live); on
 * ROUTE_NO_METHOD the path matched only other methods, listed in m->allow. */
route_result route_find(const route_table *t, const char *method, const char *path, size_t path_len,
                        route_match *m);

/* Number of routes in the table. */
size_t route_count(const route_table *t);

#endif
