/* route_test.c: pattern compilation, parameters, splats, specificity,
 * methods. */
#include "check.h"
#include "core/route.h"

static route_result find(route_table *t, const char *method, const char *path, route_match *m)
{
    return route_find(t, method, path, strlen(path), m);
}

int main(void)
{
    route_table *t = route_table_new();
    char err[128];
    CHECK_EQ_INT(route_add(t, "GET", "/healthz", 1, err, sizeof(err)), 0);
    CHECK_EQ_INT(route_add(t, "GET", "/rooms/:room", 2, err, sizeof(err)), 0);
    CHECK_EQ_INT(route_add(t, "GET", "/rooms/lobby", 3, err, sizeof(err)), 0);
    CHECK_EQ_INT(route_add(t, "GET", "/files/*", 4, err, sizeof(err)), 0);
    CHECK_EQ_INT(route_add(t, "POST", "/rooms/:room/messages/:id", 5, err, sizeof(err)), 0);
    CHECK_EQ_INT(route_add(t, "*", "/any", 6, err, sizeof(err)), 0);
    CHECK_EQ_INT(route_add(t, "GET", "/*", 7, err, sizeof(err)), 0);
    CHECK_EQ_INT(route_add(t, "GET", "/", 8, err, sizeof(err)), 0);

    CHECK_EQ_INT(route_add(t, "GET", "/healthz", 9, err, sizeof(err)), -1);
    CHECK(strstr(err, "duplicate") != NULL);
    CHECK_EQ_INT(route_add(t, "GET", "/a/*/b", 9, err, sizeof(err)), -1);
    CHECK_EQ_INT(route_add(t, "GET", "/a/:", 9, err, sizeof(err)), -1);
    CHECK_EQ_INT(route_add(t, "GET", "nope", 9, err, sizeof(err)), -1);
    /* Shadowed: an earlier route of the method takes the same paths. */
    CHECK_EQ_INT(route_add(t, "GET", "/rooms/:name", 9, err, sizeof(err)), SL_EINVAL);
    CHECK(strstr(err, "can never match: GET /rooms/:room") != NULL);
    CHECK_EQ_INT(route_add(t, "GET", "/rooms/lobby/", 9, err, sizeof(err)), 0); /* not the same */
    CHECK_EQ_INT(route_add(t, "POST", "/rooms/:x/messages/:y", 9, err, sizeof(err)), SL_EINVAL);
    CHECK_EQ_INT(route_count(t), 9);

    route_match m;
    CHECK_EQ_INT(find(t, "GET", "/healthz", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 1);
    CHECK_EQ_INT(m.nparams, 0);

    CHECK_EQ_INT(find(t, "GET", "/rooms/kitchen", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 2);
    CHECK_EQ_INT(m.nparams, 1);
    CHECK_STR(m.params[0].name, "room");
    CHECK_EQ_MEM(m.params[0].value, m.params[0].value_len, "kitchen", 7);

    /* The literal beats the parameter, whatever the order they were added. */
    CHECK_EQ_INT(find(t, "GET", "/rooms/lobby", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 3);

    CHECK_EQ_INT(find(t, "GET", "/files/a/b/c.txt", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 4);
    CHECK_STR(m.params[0].name, "*");
    CHECK_EQ_MEM(m.params[0].value, m.params[0].value_len, "a/b/c.txt", 9);

    CHECK_EQ_INT(find(t, "POST", "/rooms/r1/messages/42", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 5);
    CHECK_EQ_INT(m.nparams, 2);
    CHECK_EQ_MEM(m.params[1].value, m.params[1].value_len, "42", 2);

    /* Wrong method on a path that exists for another one. */
    CHECK_EQ_INT(find(t, "DELETE", "/rooms/r1/messages/42", &m), ROUTE_NO_METHOD);
    CHECK_STR(m.allow, "POST, GET"); /* GET through the catch-all */

    CHECK_EQ_INT(find(t, "PATCH", "/any", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 6);

    /* HEAD uses GET routes. */
    CHECK_EQ_INT(find(t, "HEAD", "/healthz", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 1);

    /* The catch-all only when nothing more specific matches. */
    CHECK_EQ_INT(find(t, "GET", "/other/thing", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 7);
    CHECK_EQ_INT(find(t, "GET", "/", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 8);

    CHECK_EQ_INT(find(t, "GET", "", &m), ROUTE_NOT_FOUND);
    route_table_free(t, NULL, NULL);

    /* Without a catch-all, unknown paths are not found. */
    t = route_table_new();
    route_add(t, "GET", "/a/:x", 1, err, sizeof(err));
    route_add(t, "GET", "/:y/b", 2, err, sizeof(err));
    CHECK_EQ_INT(find(t, "GET", "/a/b", &m), ROUTE_FOUND);
    CHECK_EQ_INT(m.handler, 1); /* the literal comes first */
    CHECK_EQ_INT(find(t, "GET", "/zzz", &m), ROUTE_NOT_FOUND);
    /* An empty segment never matches a parameter; extra segments never match. */
    route_add(t, "POST", "/rooms/:room/messages/:id", 3, err, sizeof(err));
    CHECK_EQ_INT(find(t, "POST", "/rooms//messages/1", &m), ROUTE_NOT_FOUND);
    CHECK_EQ_INT(find(t, "POST", "/rooms/a/messages/1/extra", &m), ROUTE_NOT_FOUND);
    CHECK_EQ_INT(find(t, "POST", "/rooms/a/messages/1", &m), ROUTE_FOUND);
    route_table_free(t, NULL, NULL);
    return CHECK_DONE();
}
