/*
 * jobgate's HTTP/1.1 server for the proxy port, on libevent's listener and
 * events with a strict parser of its own.
 *
 * It exists because the hit path is mostly HTTP work: a request is read
 * with one recv(2) into a per-connection buffer, parsed in place without
 * allocating, and answered with one writev(2) of a header block and the
 * body. Every client limit is enforced here: head size, header count,
 * target length, body size, and a total deadline per request that does
 * not restart on each byte. Anything ambiguous (a space before a colon,
 * obsolete line folding, a bad Content-Length, Transfer-Encoding other
 * than plain chunked, both framings at once, a malformed chunk size) is
 * answered 400 and the connection is closed.
 *
 * Requests on one connection are handled one at a time, in order; bytes of
 * a pipelined request wait in the buffer until the answer before them has
 * been queued.
 */
#ifndef JOBGATE_JG_HTTP_H
#define JOBGATE_JG_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;

struct jg_http_server;
struct jg_http_request;

struct jg_http_limits {
    size_t max_header_bytes;       /* request line and header fields */
    size_t max_headers;
    size_t max_uri_bytes;
    size_t max_body_bytes;
    uint64_t header_timeout_ms;    /* from accept to a whole first request */
    uint64_t idle_timeout_ms;      /* from an answer to the next request */
    size_t max_connections;
};

/* Counters, only ever increased. */
struct jg_http_stats {
    uint64_t connections_accepted;
    uint64_t connections_rejected;  /* over max_connections */
    uint64_t request_timeouts;      /* closed by the request deadline */
    uint64_t bad_requests;          /* answered 4xx by the parser */
};

enum jg_http_method {
    JG_HTTP_GET,
    JG_HTTP_HEAD,
    JG_HTTP_POST,
    JG_HTTP_PUT,
    JG_HTTP_DELETE,
    JG_HTTP_OPTIONS,
    JG_HTTP_PATCH,
    JG_HTTP_OTHER,
};

/* One header field of a request; both strings are NUL-terminated. */
struct jg_http_field {
    const char *name;
    size_t name_len;
    const char *value;
};

/*
 * Called once per complete request. The handler must call
 * jg_http_reply() exactly once, now or later from the same loop; the
 * request and every pointer it hands out stay valid until then.
 */
typedef void (*jg_http_handler)(struct jg_http_request *req, void *arg);

struct jg_http_server *jg_http_server_new(struct event_base *base,
                                          const struct jg_http_limits *limits,
                                          jg_http_handler handler, void *arg);

/* Serve on a bound, listening socket; the server closes it when freed. */
int jg_http_listen_fd(struct jg_http_server *srv, int fd);

/*
 * Serve fd, a connected stream socket, like an accepted connection under
 * the same limits and deadlines. The server makes fd non-blocking and
 * closes it. Returns -1 when max_connections are already open, and fd then
 * stays open and belongs to the caller. Tests pass one end of a
 * socketpair(2).
 */
int jg_http_adopt_fd(struct jg_http_server *srv, int fd);

/* Stop accepting; listening sockets are closed. */
void jg_http_stop_accepting(struct jg_http_server *srv);

/*
 * Close every connection that has no request being handled, and make the
 * others close after their answer. Returns the connections left open.
 */
size_t jg_http_close_idle(struct jg_http_server *srv);

/* Connections open now. */
size_t jg_http_connections(const struct jg_http_server *srv);

/* Call cb every time the last connection closes. */
void jg_http_set_empty_cb(struct jg_http_server *srv, void (*cb)(void *),
                          void *arg);

const struct jg_http_stats *jg_http_stats(const struct jg_http_server *srv);

/* Close every connection without answering and free the server. */
void jg_http_server_free(struct jg_http_server *srv);

/* ---- requests ------------------------------------------------------- */

enum jg_http_method jg_http_method(const struct jg_http_request *req);
const char *jg_http_method_name(const struct jg_http_request *req);
/* The request target as received, NUL-terminated. */
const char *jg_http_target(const struct jg_http_request *req);

size_t jg_http_field_count(const struct jg_http_request *req);
const struct jg_http_field *jg_http_fields(const struct jg_http_request *req);
/* The first field named name (any case), or NULL. */
const char *jg_http_find(const struct jg_http_request *req, const char *name);
/* Same, unless the Connection field lists the name as hop-by-hop. */
const char *jg_http_find_end_to_end(const struct jg_http_request *req,
                                    const char *name);
/* True when the Connection field lists name. */
bool jg_http_connection_lists(const struct jg_http_request *req,
                              const char *name);

/*
 * True when the comma-separated field value list contains token, in any
 * case, as in "Connection: keep-alive, Upgrade" or "Cache-Control:
 * no-cache". Surrounding spaces and tabs of each element are ignored.
 */
bool jg_http_list_has_token(const char *list, const char *token);

/* The request body, possibly empty; valid until the reply. */
const char *jg_http_body(const struct jg_http_request *req, size_t *len);

/* ---- answers -------------------------------------------------------- */

/*
 * Add a response header. name and value must hold no CR or LF; values
 * relayed from the upstream already cannot.
 */
void jg_http_add_header(struct jg_http_request *req, const char *name,
                        const char *value);

/* Close the connection after this answer. */
void jg_http_set_close(struct jg_http_request *req);

/*
 * Send the answer and end the request: status line, the added headers,
 * Date, Content-Length and Connection as needed, then body[0..len) (none
 * for HEAD, 204 and 304). After this call req is gone.
 */
void jg_http_reply(struct jg_http_request *req, int status, const void *body,
                   size_t len);

/* The same with the body in an evbuffer, which is drained. */
void jg_http_reply_buffer(struct jg_http_request *req, int status,
                          struct evbuffer *body);

#endif
