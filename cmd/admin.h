/* admin.h: the operator commands on a data directory (`sluice topics`,
 * `sluice dump`, `sluice check`), read-only and safe beside a running
 * server, and the server's reports of a damaged store. */
#ifndef SLUICE_ADMIN_H
#define SLUICE_ADMIN_H

#include "storage/store.h"

/* Runs the command named by argv[1] ("topics", "dump" or "check"); returns
 * the exit status. */
int admin_main(int argc, char **argv);

/* store_opts.damage for the server: a damaged message or page that a read
 * skipped, logged at error (rate-limited; /metrics counts every one). */
void admin_log_damage(void *ud, const struct store_damage *d);

/* A read of a mapped file past its end (data.mdb cut short while open, or
 * a disk error) raises SIGBUS: from now on the process says so, naming
 * dir and `sluice check`, before it dies of it. */
void admin_catch_bus_errors(const char *dir);

#endif
