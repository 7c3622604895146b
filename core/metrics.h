/* metrics.h: the Prometheus text exposition behind /metrics.
 *
 * The core renders every counter it keeps itself (connections by
 * transport, the hub's publishes and deliveries, storage, the publish
 * latency histogram, HTTP refusals); the embedder (the Lua layer) hands in
 * the counters that live above the core (script errors, refused event
 * names) as `metrics_extra` rows, so that the text is made in one place
 * and the core depends on nothing above it. */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include "core/hub.h"

#include <stddef.h>

/* One series from above the core.  Rows of one family (same `name`) must
 * be consecutive: HELP and TYPE are written once, before the first. */
typedef struct metrics_extra {
    const char *name;  /* "sluice_script_errors_total" */
    const char *type;  /* "counter", "gauge" */
    const char *help;  /* one line */
    const char *label; /* a label set without braces ("source=\"filter\""), or NULL */
    unsigned long long value;
} metrics_extra;

/* The whole exposition for `h` (NULL: a hub not yet open, whose counters
 * read 0) and the extra rows, in a malloc'd buffer the caller frees;
 * *len gets its length.  NULL when out of memory. */
char *metrics_render(const hub *h, const metrics_extra *extra, size_t nextra, size_t *len);

#endif
