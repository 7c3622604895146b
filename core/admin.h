/* admin.h: the operator commands on a data directory (`sluice topics`,
 * `sluice dump`), read-only and safe beside a running server. */
#ifndef SLUICE_ADMIN_H
#define SLUICE_ADMIN_H

/* Runs the command named by argv[1] ("topics" or "dump"); returns the exit
 * status. */
int admin_main(int argc, char **argv);

#endif
