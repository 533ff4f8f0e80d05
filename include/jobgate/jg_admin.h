/*
 * The admin listener, separate from the proxy port: health and readiness
 * probes, Prometheus metrics and cache purges.
 */
#ifndef JOBGATE_JG_ADMIN_H
#define JOBGATE_JG_ADMIN_H

struct jg_server;

/* Bind admin_listen and route its requests. Returns 0 or -1. */
int jg_admin_init(struct jg_server *srv);

#endif
