/*
 * The upstream client: libcurl's multi interface driven by the libevent
 * loop through curl_multi_socket_action, with a keep-alive connection pool
 * capped at upstream_max_connections. One jg_upstream serves every request
 * of one event loop.
 */
#ifndef JOBGATE_JG_UPSTREAM_H
#define JOBGATE_JG_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct evkeyvalq;
struct curl_slist;

struct jg_upstream;
struct jg_fetch;

struct jg_upstream_options {
    const char *base_url;         /* "http://127.0.0.1:8080", no slash at end */
    uint64_t timeout_ms;          /* whole exchange */
    uint64_t connect_timeout_ms;
    uint64_t max_connections;     /* pool size, and the cap of open sockets */
    uint64_t max_response_bytes;  /* larger bodies fail the fetch */
};

enum jg_fetch_error {
    JG_FETCH_OK = 0,          /* an HTTP response arrived, whatever its status */
    JG_FETCH_CONNECT,         /* refused, unreachable, DNS */
    JG_FETCH_TIMEOUT,
    JG_FETCH_TOO_LARGE,       /* body above max_response_bytes */
    JG_FETCH_PROTOCOL,        /* reset, truncated, malformed response */
    JG_FETCH_CANCELLED,
};

/*
 * The outcome of a fetch. Everything here is owned by the upstream module
 * and valid only during the callback; the callback may move the body out
 * with evbuffer_add_buffer().
 */
struct jg_upstream_response {
    enum jg_fetch_error error;
    long status;                  /* HTTP status, 0 unless error is OK */
    struct evkeyvalq *headers;    /* response headers, hop-by-hop removed */
    struct evbuffer *body;
    const char *error_text;       /* libcurl's error buffer, for logs */
    uint64_t elapsed_ms;
};

typedef void (*jg_fetch_cb)(const struct jg_upstream_response *response,
                            void *arg);

struct jg_upstream *jg_upstream_create(struct event_base *base,
                                       const struct jg_upstream_options *opts);

/*
 * Cancel every fetch without calling its callback, then free. Not to be
 * called from inside a fetch callback.
 */
void jg_upstream_free(struct jg_upstream *up);

/*
 * Start a request for base_url + target (target begins with '/', query
 * included). headers is a libcurl list whose ownership passes to the fetch;
 * body is copied. cb is called exactly once, from the event loop and never
 * from inside this call, unless the fetch is cancelled first. The returned
 * handle is valid until cb runs or jg_upstream_cancel() returns.
 */
struct jg_fetch *jg_upstream_fetch(struct jg_upstream *up, const char *method,
                                   const char *target,
                                   struct curl_slist *headers,
                                   const void *body, size_t body_len,
                                   jg_fetch_cb cb, void *arg);

/*
 * Finish every running fetch with JG_FETCH_CANCELLED, calling each callback,
 * so that their callers can answer and free what they hold. Used when a
 * drain runs out of time. Fetches the callbacks start are not aborted.
 */
void jg_upstream_abort_all(struct jg_upstream *up);

/*
 * Abort a fetch; its callback is not called. A callback may cancel other
 * fetches, including ones that finished but were not reported yet. A fetch
 * cancelled from its own callback is left alone and freed when it returns.
 */
void jg_upstream_cancel(struct jg_fetch *fetch);

/* Fetches started and not yet finished. */
size_t jg_upstream_active(const struct jg_upstream *up);

const char *jg_fetch_error_name(enum jg_fetch_error error);

#endif
