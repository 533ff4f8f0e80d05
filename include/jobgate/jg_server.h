/*
 * The server: one event loop with its front end (evhttp), admin listener,
 * upstream client, cache, principal table and in-flight fetches. Every
 * module's state hangs off this struct, which is passed explicitly, so that
 * a process can later run one such loop per core.
 */
#ifndef JOBGATE_JG_SERVER_H
#define JOBGATE_JG_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobgate/jg_config.h"

struct event;
struct event_base;
struct evhttp;
struct evbuffer;
struct jg_cache;
struct jg_flight;
struct jg_http_request;
struct jg_http_server;
struct jg_principals;
struct jg_upstream;

/* Counters shown on the admin /metrics page; only ever increased. */
struct jg_metrics {
    uint64_t requests;
    uint64_t requests_job;
    uint64_t requests_passthrough;
    uint64_t requests_invalid;       /* local 4xx: bad id, framing, limits */
    uint64_t cache_hits;
    uint64_t cache_misses;
    uint64_t not_modified;
    uint64_t unproven_misses;        /* miss because the caller was unproven */
    uint64_t only_if_cached_misses;
    uint64_t stored;
    uint64_t not_stored;             /* 200 answers that were not cacheable */
    uint64_t upstream_requests;
    uint64_t upstream_errors;        /* no HTTP answer: refused, reset, ... */
    uint64_t upstream_timeouts;
    uint64_t coalesced;              /* requests that joined a fetch */
    uint64_t coalesce_full;          /* joins refused by max_waiters */
    uint64_t refetched;              /* waiters refused the shared answer */
    uint64_t responses[6];           /* by status class: [1] 1xx .. [5] 5xx */
};

struct jg_server {
    struct jg_config cfg;
    struct event_base *base;
    struct jg_http_server *front;  /* the proxy port */
    struct evhttp *admin;
    struct jg_upstream *upstream;
    struct jg_cache *cache;
    struct jg_principals *principals;
    struct jg_metrics metrics;
    /* Key of the owner tags of share_scope = credential, kept in the
     * cache directory so that tags survive a restart. */
    uint8_t owner_key[32];

    /* In-flight shared fetches, a small chained hash table. */
    struct jg_flight **flights;
    size_t flight_buckets;
    size_t flight_count;
    /* Counts credentials forgotten after a 401, so that a fetch started
     * before one can tell its answer may be stale proof. */
    uint64_t forget_epoch;


    /* Requests received and not yet answered. */
    size_t active_requests;

    struct event *flush_event;   /* commits queued cache writes */
    struct event *sigterm_event;
    struct event *sigint_event;
    struct event *drain_timer;
    bool draining;
    uint64_t started_ms;
};

/*
 * Create every part of the server from cfg and bind its listeners. Returns
 * 0, or -1 after logging why. The server is not running until
 * jg_server_run().
 */
int jg_server_init(struct jg_server *srv, const struct jg_config *cfg);

/* Run the event loop until a drain finishes. Returns the exit status. */
int jg_server_run(struct jg_server *srv);

void jg_server_free(struct jg_server *srv);

/* Schedule the commit of queued cache writes at the end of this loop turn. */
void jg_server_schedule_flush(struct jg_server *srv);

/* Called when a request has been answered, to finish a drain. */
void jg_server_request_done(struct jg_server *srv);

/*
 * Bind and listen on "host:port", "[v6]:port" or "unix:/path", and log the
 * address as "<what> on http://a:p". Returns the socket, or -1 after
 * logging why.
 */
int jg_server_bind(const char *spec, const char *what);

/* Count a response by status class. */
void jg_server_count_status(struct jg_server *srv, int status);

/*
 * Send the answer of a proxy-port request. Every answer goes through here,
 * so that the status is counted and answers sent while draining close
 * their connection.
 */
void jg_server_reply(struct jg_server *srv, struct jg_http_request *req,
                     int status, const void *body, size_t len);
void jg_server_reply_buffer(struct jg_server *srv,
                            struct jg_http_request *req, int status,
                            struct evbuffer *body);

#endif
