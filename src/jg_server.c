/*
 * The server's life: binding the proxy and admin listeners, the client
 * limits evhttp does not enforce by itself, the cache write batch of each
 * loop turn, and the drain on SIGTERM or SIGINT.
 *
 * evhttp's own read timeout restarts on every byte, so a client sending one
 * byte at a time could hold a connection forever. jobgate keeps a deadline
 * per connection instead: client_header_timeout_ms from accept to the end
 * of the first request head, and client_timeout_ms from each answer to the
 * end of the next head. evhttp in libevent 2.1 has no hook for a new
 * connection, so the connection is found through the bufferevent that
 * jobgate creates for it, whose callback argument evhttp sets to the
 * connection.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "jobgate/jg_admin.h"
#include "jobgate/jg_cache.h"
#include "jobgate/jg_log.h"
#include "jobgate/jg_principal.h"
#include "jobgate/jg_request.h"
#include "jobgate/jg_server.h"
#include "jobgate/jg_upstream.h"
#include "jobgate/jg_util.h"

/* One accepted client connection. */
struct jg_conn {
    struct jg_conn *next;            /* bucket chain */
    struct jg_server *srv;
    struct bufferevent *bev;
    struct evhttp_connection *evcon; /* NULL until adopted */
    struct event *deadline;
    struct event *adopt;
    bool busy;                       /* a request is read and not yet sent */
};

static size_t
conn_bucket(const struct jg_server *srv, const void *evcon)
{
    return ((uintptr_t)evcon >> 4) % srv->conn_buckets;
}

static struct jg_conn **
conn_slot(struct jg_server *srv, const struct evhttp_connection *evcon)
{
    struct jg_conn **slot = &srv->conns[conn_bucket(srv, evcon)];

    while (*slot != NULL && (*slot)->evcon != evcon)
        slot = &(*slot)->next;
    return slot;
}

static void
conn_free(struct jg_conn *conn)
{
    event_free(conn->deadline);
    event_free(conn->adopt);
    jg_free(conn);
}

/* evhttp is closing the connection: forget it. */
static void
conn_closed(struct evhttp_connection *evcon, void *arg)
{
    struct jg_conn *conn = arg;
    struct jg_server *srv = conn->srv;
    struct jg_conn **slot = conn_slot(srv, evcon);

    if (*slot == conn) {
        *slot = conn->next;
        srv->conn_count--;
    }
    conn_free(conn);
    if (srv->draining && srv->active_requests == 0 && srv->conn_count == 0)
        event_base_loopexit(srv->base, NULL);
}

static void
conn_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct jg_conn *conn = arg;

    (void)fd;
    (void)what;
    conn->srv->metrics.header_timeouts++;
    jg_log_debug("closing a connection that sent no complete request in "
                 "time");
    /* This runs conn_closed(), which frees conn. */
    evhttp_connection_free(conn->evcon);
}

static void
conn_arm(struct jg_conn *conn, uint64_t ms)
{
    struct timeval tv = {
        .tv_sec = (time_t)(ms / 1000),
        .tv_usec = (suseconds_t)(ms % 1000) * 1000,
    };

    evtimer_add(conn->deadline, &tv);
}

/*
 * Runs in the loop turn of the accept, after evhttp has created the
 * connection and set itself as the bufferevent's callback argument.
 */
static void
conn_adopt(evutil_socket_t fd, short what, void *arg)
{
    struct jg_conn *conn = arg;
    struct jg_server *srv = conn->srv;
    bufferevent_data_cb readcb;
    void *cbarg = NULL;

    (void)fd;
    (void)what;
    bufferevent_getcb(conn->bev, &readcb, NULL, NULL, &cbarg);
    if (readcb == NULL || cbarg == NULL) {
        /* evhttp already dropped the connection. */
        bufferevent_decref(conn->bev);
        conn_free(conn);
        return;
    }
    bufferevent_decref(conn->bev);

    conn->evcon = cbarg;
    if (srv->conn_count >= srv->cfg.max_connections) {
        uint64_t now = jg_now_ms();

        srv->metrics.connections_rejected++;
        /* One line a second at most: a flood must not flood the log. */
        if (now - srv->last_reject_log_ms >= 1000) {
            jg_log_warn("closing new connections: max_connections (%llu) "
                        "reached; %llu rejected so far",
                        (unsigned long long)srv->cfg.max_connections,
                        (unsigned long long)
                            srv->metrics.connections_rejected);
            srv->last_reject_log_ms = now;
        }
        conn_free(conn);
        evhttp_connection_free(cbarg);
        return;
    }

    conn->next = srv->conns[conn_bucket(srv, conn->evcon)];
    srv->conns[conn_bucket(srv, conn->evcon)] = conn;
    srv->conn_count++;
    srv->metrics.connections_accepted++;
    evhttp_connection_set_closecb(conn->evcon, conn_closed, conn);
    conn_arm(conn, srv->cfg.client_header_timeout_ms);
}

/* evhttp's hook for the bufferevent of each accepted connection. */
static struct bufferevent *
conn_new_bufferevent(struct event_base *base, void *arg)
{
    struct jg_server *srv = arg;
    struct jg_conn *conn = jg_calloc(1, sizeof(*conn));

    conn->srv = srv;
    conn->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (conn->bev == NULL) {
        jg_log_error("cannot create a bufferevent for a new connection");
        jg_free(conn);
        return NULL;
    }
    conn->deadline = evtimer_new(base, conn_deadline, conn);
    conn->adopt = event_new(base, -1, 0, conn_adopt, conn);

    /* Keep the bufferevent alive until conn_adopt has looked at it. */
    bufferevent_incref(conn->bev);
    event_active(conn->adopt, 0, 0);
    return conn->bev;
}

void
jg_server_note_request(struct jg_server *srv, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct jg_conn *conn;

    if (evcon == NULL)
        return;
    conn = *conn_slot(srv, evcon);
    if (conn != NULL) {
        evtimer_del(conn->deadline);
        conn->busy = true;
    }
}

/* evhttp has written the whole answer of a request. */
static void
reply_sent(struct evhttp_request *req, void *arg)
{
    struct jg_conn *conn = arg;

    (void)req;
    conn->busy = false;
}

void
jg_server_count_status(struct jg_server *srv, int status)
{
    if (status >= 100 && status < 600)
        srv->metrics.responses[status / 100]++;
}

void
jg_server_reply(struct jg_server *srv, struct evhttp_request *req,
                int status, struct evbuffer *body)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);

    if (evcon != NULL) {
        struct jg_conn *conn = *conn_slot(srv, evcon);

        if (conn != NULL) {
            conn_arm(conn, srv->cfg.client_timeout_ms);
            evhttp_request_set_on_complete_cb(req, reply_sent, conn);
        }
    }
    if (srv->draining)
        evhttp_add_header(evhttp_request_get_output_headers(req),
                          "Connection", "close");
    jg_server_count_status(srv, status);
    evhttp_send_reply(req, status, jg_status_reason(status), body);
}

/* ---- cache batch ---------------------------------------------------- */

static void
flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct jg_server *srv = arg;

    (void)fd;
    (void)what;
    jg_cache_flush(srv->cache);
}

void
jg_server_schedule_flush(struct jg_server *srv)
{
    if (!event_pending(srv->flush_event, EV_TIMEOUT, NULL))
        event_active(srv->flush_event, EV_TIMEOUT, 0);
}

/* ---- drain ---------------------------------------------------------- */

/*
 * Close the connections that have no answer being written; the others
 * close once written, because answers sent while draining carry
 * "Connection: close". The loop ends with the last connection.
 */
static void
close_idle_connections(struct jg_server *srv)
{
    size_t i;

    for (i = 0; i < srv->conn_buckets; i++) {
        struct jg_conn *conn = srv->conns[i];

        while (conn != NULL) {
            struct jg_conn *next = conn->next;

            if (!conn->busy)
                evhttp_connection_free(conn->evcon);
            conn = next;
        }
    }
    if (srv->conn_count == 0)
        event_base_loopexit(srv->base, NULL);
}

void
jg_server_request_done(struct jg_server *srv)
{
    srv->active_requests--;
    if (srv->draining && srv->active_requests == 0) {
        jg_log_info("drain finished");
        close_idle_connections(srv);
    }
}

static void
drain_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct jg_server *srv = arg;

    (void)fd;
    (void)what;
    jg_log_warn("drain deadline of %llu ms passed with %zu requests in "
                "flight; answering them 503",
                (unsigned long long)srv->cfg.drain_timeout_ms,
                srv->active_requests);
    /* Each callback answers its clients, which ends the drain. */
    jg_upstream_abort_all(srv->upstream);
    if (srv->active_requests > 0) {
        jg_log_error("%zu requests still unanswered at the drain deadline",
                     srv->active_requests);
        event_base_loopexit(srv->base, NULL);
    }
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct jg_server *srv = arg;
    struct timeval tv = {
        .tv_sec = (time_t)(srv->cfg.drain_timeout_ms / 1000),
        .tv_usec = (suseconds_t)(srv->cfg.drain_timeout_ms % 1000) * 1000,
    };

    (void)what;
    if (srv->draining)
        return;
    srv->draining = true;
    jg_log_info("received %s, draining %zu requests in flight",
                sig == SIGTERM ? "SIGTERM" : "SIGINT", srv->active_requests);
    if (srv->listener != NULL) {
        evhttp_del_accept_socket(srv->http, srv->listener);
        srv->listener = NULL;
    }
    evtimer_add(srv->drain_timer, &tv);
    if (srv->active_requests == 0)
        close_idle_connections(srv);
}

/* ---- listeners ------------------------------------------------------ */

static int
bind_unix(struct evhttp *http, const char *path,
          struct evhttp_bound_socket **out)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    struct stat st;
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        jg_log_error("unix socket path %s is longer than %zu bytes", path,
                     sizeof(sun.sun_path) - 1);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);

    /* A socket left by an earlier run is replaced; any other file is not. */
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            jg_log_error("cannot listen on %s: a file that is not a socket "
                         "is in the way", path);
            return -1;
        }
        unlink(path);
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 ||
        listen(fd, 1024) != 0) {
        jg_log_error("cannot listen on unix:%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *out = evhttp_accept_socket_with_handle(http, fd);
    if (*out == NULL) {
        close(fd);
        return -1;
    }
    return 0;
}

/* Split "host:port" or "[v6]:port"; host is written into hostbuf. */
static int
split_host_port(const char *spec, char *hostbuf, size_t hostlen,
                unsigned *port)
{
    const char *colon = strrchr(spec, ':');
    const char *host = spec;
    size_t len;
    char *end;
    unsigned long p;

    if (colon == NULL)
        return -1;
    len = (size_t)(colon - spec);
    if (spec[0] == '[') {
        if (len < 2 || spec[len - 1] != ']')
            return -1;
        host = spec + 1;
        len -= 2;
    }
    if (len == 0 || len >= hostlen)
        return -1;
    memcpy(hostbuf, host, len);
    hostbuf[len] = '\0';

    errno = 0;
    p = strtoul(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || end == colon + 1 || p > 65535)
        return -1;
    *port = (unsigned)p;
    return 0;
}

void
jg_server_log_bound(const char *what, struct evhttp_bound_socket *bound)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[INET6_ADDRSTRLEN];
    evutil_socket_t fd = evhttp_bound_socket_get_fd(bound);

    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        jg_log_info("%s on http://%s:%u", what, host, ntohs(sin->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        jg_log_info("%s on http://[%s]:%u", what, host,
                    ntohs(sin6->sin6_port));
    } else if (ss.ss_family == AF_UNIX) {
        jg_log_info("%s on unix:%s", what,
                    ((struct sockaddr_un *)&ss)->sun_path);
    }
}

static int
bind_listener(struct evhttp *http, const char *spec, const char *what,
              struct evhttp_bound_socket **out)
{
    char host[256];
    unsigned port;

    if (strncmp(spec, "unix:", 5) == 0) {
        if (bind_unix(http, spec + 5, out) != 0)
            return -1;
    } else {
        if (split_host_port(spec, host, sizeof(host), &port) != 0) {
            jg_log_error("invalid listen address \"%s\": expected host:port,"
                         " [ipv6]:port or unix:/path", spec);
            return -1;
        }
        *out = evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port);
        if (*out == NULL) {
            jg_log_error("cannot listen on %s: %s", spec, strerror(errno));
            return -1;
        }
    }
    jg_server_log_bound(what, *out);
    return 0;
}

static struct evhttp *
new_front_end(struct jg_server *srv)
{
    const struct jg_config *cfg = &srv->cfg;
    struct evhttp *http = evhttp_new(srv->base);
    struct timeval tv = {
        .tv_sec = (time_t)(cfg->client_timeout_ms / 1000),
        .tv_usec = (suseconds_t)(cfg->client_timeout_ms % 1000) * 1000,
    };

    /* evhttp counts the request line and the header block against one
     * limit; the URI and header count limits are checked per request. */
    evhttp_set_max_headers_size(http, (ev_ssize_t)cfg->max_header_bytes);
    evhttp_set_max_body_size(http, (ev_ssize_t)cfg->max_request_body_bytes);
    evhttp_set_timeout_tv(http, &tv);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                                         EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                         EVHTTP_REQ_DELETE |
                                         EVHTTP_REQ_OPTIONS |
                                         EVHTTP_REQ_PATCH);
    /* Relayed answers keep the upstream's type, or none. */
    evhttp_set_default_content_type(http, NULL);
    evhttp_set_bevcb(http, conn_new_bufferevent, srv);
    evhttp_set_gencb(http, jg_request_handle, srv);
    return http;
}

/*
 * Read the owner-tag key from the cache directory, or create it there with
 * mode 0600. Every process sharing the directory uses the same key.
 */
static int
load_owner_key(struct jg_server *srv)
{
    char path[JG_CONFIG_STR_MAX + 16];
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "%s/owner.key", srv->cfg.cache_dir);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        if (RAND_bytes(srv->owner_key, sizeof(srv->owner_key)) != 1) {
            jg_log_error("cannot draw random bytes for %s", path);
            return -1;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            n = write(fd, srv->owner_key, sizeof(srv->owner_key));
            close(fd);
            if (n == (ssize_t)sizeof(srv->owner_key))
                return 0;
            unlink(path);
            jg_log_error("cannot write %s: %s", path, strerror(errno));
            return -1;
        }
        /* Another process created it first: read theirs. */
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        jg_log_error("cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    n = read(fd, srv->owner_key, sizeof(srv->owner_key));
    close(fd);
    if (n != (ssize_t)sizeof(srv->owner_key)) {
        jg_log_error("%s is not a %zu-byte key; remove it to make a new one",
                     path, sizeof(srv->owner_key));
        return -1;
    }
    return 0;
}

static int
open_parts(struct jg_server *srv)
{
    const struct jg_config *cfg = &srv->cfg;
    struct jg_cache_options copts = {
        .dir = cfg->cache_dir,
        .max_bytes = cfg->cache_max_bytes,
        .ttl_s = cfg->terminal_ttl_s,
    };
    struct jg_upstream_options uopts = {
        .base_url = cfg->upstream,
        .timeout_ms = cfg->upstream_timeout_ms,
        .connect_timeout_ms = cfg->upstream_connect_timeout_ms,
        .max_connections = cfg->upstream_max_connections,
        .max_response_bytes = cfg->max_passthrough_bytes,
    };
    char err[512];

    if (jg_cache_open(&srv->cache, &copts, err, sizeof(err)) != 0) {
        jg_log_error("cannot open the cache: %s", err);
        return -1;
    }
    if (cfg->share_scope == JG_SHARE_CREDENTIAL && load_owner_key(srv) != 0)
        return -1;
    srv->principals = jg_principals_create(cfg->max_principals,
                                           cfg->auth_ttl_s);
    srv->upstream = jg_upstream_create(srv->base, &uopts);
    if (srv->upstream == NULL) {
        jg_log_error("cannot create the upstream client for %s",
                     cfg->upstream);
        return -1;
    }
    return 0;
}

int
jg_server_init(struct jg_server *srv, const struct jg_config *cfg)
{
    memset(srv, 0, sizeof(*srv));
    srv->cfg = *cfg;
    srv->started_ms = jg_now_ms();
    srv->flight_buckets = 1024;
    srv->flights = jg_calloc(srv->flight_buckets, sizeof(*srv->flights));
    srv->conn_buckets = 4096;
    srv->conns = jg_calloc(srv->conn_buckets, sizeof(*srv->conns));

    srv->base = event_base_new();
    if (srv->base == NULL) {
        jg_log_error("cannot create the event loop");
        return -1;
    }
    /* Activated events run in order, so the batch commits after the
     * callbacks already active in this loop turn. */
    srv->flush_event = event_new(srv->base, -1, 0, flush_cb, srv);

    if (open_parts(srv) != 0)
        return -1;

    srv->http = new_front_end(srv);
    if (bind_listener(srv->http, cfg->listen, "listening",
                      &srv->listener) != 0)
        return -1;
    if (cfg->admin_listen[0] != '\0' && jg_admin_init(srv) != 0)
        return -1;

    srv->sigterm_event = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    srv->sigint_event = evsignal_new(srv->base, SIGINT, on_signal, srv);
    evsignal_add(srv->sigterm_event, NULL);
    evsignal_add(srv->sigint_event, NULL);
    srv->drain_timer = evtimer_new(srv->base, drain_timeout, srv);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

int
jg_server_run(struct jg_server *srv)
{
    srv->accepting = true;
    jg_log_info("ready");
    if (event_base_dispatch(srv->base) < 0) {
        jg_log_error("the event loop failed");
        return 1;
    }
    return 0;
}

void
jg_server_free(struct jg_server *srv)
{
    /* Connections first: their close callbacks use the table. */
    if (srv->http != NULL)
        evhttp_free(srv->http);
    if (srv->admin != NULL)
        evhttp_free(srv->admin);
    if (srv->upstream != NULL)
        jg_upstream_free(srv->upstream);
    if (srv->cache != NULL)
        jg_cache_close(srv->cache);
    if (srv->principals != NULL)
        jg_principals_free(srv->principals);
    if (srv->flush_event != NULL)
        event_free(srv->flush_event);
    if (srv->sigterm_event != NULL)
        event_free(srv->sigterm_event);
    if (srv->sigint_event != NULL)
        event_free(srv->sigint_event);
    if (srv->drain_timer != NULL)
        event_free(srv->drain_timer);
    if (srv->base != NULL)
        event_base_free(srv->base);
    if (strncmp(srv->cfg.listen, "unix:", 5) == 0)
        unlink(srv->cfg.listen + 5);
    jg_free(srv->flights);
    jg_free(srv->conns);
}
