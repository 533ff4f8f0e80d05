/*
 * The server: one struct jg_server per worker, each an event loop on a
 * thread of its own with its front end on the shared listening socket, its
 * upstream client and connection pool, and its handle on the cache. A
 * connection stays on the worker that accepted it. Worker 0 runs on the
 * main thread and also owns the admin listener and the signals. What the
 * workers share (the principal table and the in-flight fetches, so that
 * misses for one job coalesce whichever worker received them) is in
 * struct jg_shared. A worker asks another to run something on its thread
 * with jg_server_post().
 */
#ifndef JOBGATE_JG_SERVER_H
#define JOBGATE_JG_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobgate/jg_config.h"

struct event;
struct event_base;
struct evhttp;
struct evbuffer;
struct jg_cache;
struct jg_cache_stats;
struct jg_flight;
struct jg_http_request;
struct jg_http_server;
struct jg_http_stats;
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

/* The state that every worker of the process shares. */
struct jg_shared {
    /* Guards the flight table and the waiter list of every flight in it. */
    pthread_mutex_t flights_lock;
    struct jg_flight **flights;
    size_t flight_buckets;
    size_t flight_count;
    /* Counts credentials forgotten after a 401, so that a fetch started
     * before one can tell its answer may be stale proof; atomic. */
    uint64_t forget_epoch;
    /* Counts the settles that removed flights whose answers had just been
     * committed; written under flights_lock, read atomically. */
    uint64_t settle_gen;
    struct jg_principals *principals;
    struct jg_server **workers;    /* worker 0 first */
    size_t worker_count;
};

/* A function to run on a worker's thread, queued by jg_server_post(). */
struct jg_message {
    struct jg_message *next;
    void (*run)(struct jg_server *srv, void *arg);
    void *arg;
};

struct jg_server {
    struct jg_config cfg;
    struct jg_shared *shared;
    size_t index;                  /* 0 is the main thread */
    struct event_base *base;
    struct jg_http_server *front;  /* the proxy port */
    struct evhttp *admin;
    struct jg_upstream *upstream;
    struct jg_cache *cache;
    struct jg_principals *principals; /* the shared table */
    struct jg_metrics metrics;
    /* Key of the owner tags of share_scope = credential, kept in the
     * cache directory so that tags survive a restart. */
    uint8_t owner_key[32];

    /* Messages from other workers, and the eventfd that wakes this loop
     * for them. */
    pthread_mutex_t inbox_lock;
    struct jg_message *inbox;
    struct jg_message **inbox_tail;
    int inbox_fd;
    struct event *inbox_event;
    pthread_t thread;

    /* Requests received and not yet answered. */
    size_t active_requests;

    struct event *flush_event;   /* commits queued cache writes */
    /* Flights whose answers wait in this worker's cache batch. */
    struct jg_flight *settled;
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

/*
 * Run run(to, arg) on the thread of worker to, in its loop's next turn.
 * Safe from any thread; messages from one thread run in the order posted.
 */
void jg_server_post(struct jg_server *to,
                    void (*run)(struct jg_server *srv, void *arg), void *arg);

/*
 * Sum the counters of every worker into the zeroed m, cs and hs, and the
 * gauges into *connections and *upstream_active.
 */
void jg_server_sum_stats(const struct jg_server *srv, struct jg_metrics *m,
                         struct jg_cache_stats *cs, struct jg_http_stats *hs,
                         uint64_t *connections, uint64_t *upstream_active);

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
