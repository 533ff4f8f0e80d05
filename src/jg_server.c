/*
 * The server's life: binding the proxy and admin listeners, starting the
 * worker threads, the messages between them, the cache write batch of each
 * loop turn, and the drain on SIGTERM or SIGINT.
 *
 * The proxy port is served by jobgate's own HTTP server (jg_http.c), which
 * enforces the client limits; the admin port by evhttp, whose speed does
 * not matter there.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "jobgate/jg_admin.h"
#include "jobgate/jg_cache.h"
#include "jobgate/jg_http.h"
#include "jobgate/jg_log.h"
#include "jobgate/jg_principal.h"
#include "jobgate/jg_request.h"
#include "jobgate/jg_server.h"
#include "jobgate/jg_upstream.h"
#include "jobgate/jg_util.h"

/* ---- answers -------------------------------------------------------- */

void
jg_server_count_status(struct jg_server *srv, int status)
{
    if (status >= 100 && status < 600)
        JG_COUNT(srv->metrics.responses[status / 100]);
}

void
jg_server_reply(struct jg_server *srv, struct jg_http_request *req,
                int status, const void *body, size_t len)
{
    if (srv->draining)
        jg_http_set_close(req);
    jg_server_count_status(srv, status);
    jg_http_reply(req, status, body, len);
}

void
jg_server_reply_buffer(struct jg_server *srv, struct jg_http_request *req,
                       int status, struct evbuffer *body)
{
    if (srv->draining)
        jg_http_set_close(req);
    jg_server_count_status(srv, status);
    jg_http_reply_buffer(req, status, body);
}

/* ---- cache batch ---------------------------------------------------- */

static void
flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct jg_server *srv = arg;

    (void)fd;
    (void)what;
    jg_cache_flush(srv->cache);
    jg_request_settle(srv);
}

void
jg_server_schedule_flush(struct jg_server *srv)
{
    if (!event_pending(srv->flush_event, EV_TIMEOUT, NULL))
        event_active(srv->flush_event, EV_TIMEOUT, 0);
}

/* ---- drain ---------------------------------------------------------- */

/*
 * Close the connections with no request being handled; the others close
 * after their answer, which carries "Connection: close". The loop ends
 * with the last connection.
 */
static void
close_idle_connections(struct jg_server *srv)
{
    if (jg_http_close_idle(srv->front) == 0)
        event_base_loopexit(srv->base, NULL);
}

static void
connections_gone(void *arg)
{
    struct jg_server *srv = arg;

    if (srv->draining && srv->active_requests == 0)
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

/* Stop accepting, and end the loop once the requests in flight are
 * answered or the drain deadline passes. */
static void
begin_drain(struct jg_server *srv, void *arg)
{
    struct timeval tv = {
        .tv_sec = (time_t)(srv->cfg.drain_timeout_ms / 1000),
        .tv_usec = (suseconds_t)(srv->cfg.drain_timeout_ms % 1000) * 1000,
    };

    (void)arg;
    if (srv->draining)
        return;
    srv->draining = true;
    jg_http_stop_accepting(srv->front);
    evtimer_add(srv->drain_timer, &tv);
    if (srv->active_requests == 0)
        close_idle_connections(srv);
}

/* Signals reach worker 0, which drains every worker. */
static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct jg_server *srv = arg;
    struct jg_shared *sh = srv->shared;
    size_t i;

    (void)what;
    if (srv->draining)
        return;
    jg_log_info("received %s, draining", sig == SIGTERM ? "SIGTERM"
                                                        : "SIGINT");
    for (i = 1; i < sh->worker_count; i++)
        jg_server_post(sh->workers[i], begin_drain, NULL);
    begin_drain(srv, NULL);
}

/* ---- messages between workers --------------------------------------- */

void
jg_server_post(struct jg_server *to,
               void (*run)(struct jg_server *srv, void *arg), void *arg)
{
    struct jg_message *msg = jg_malloc(sizeof(*msg));
    uint64_t one = 1;
    bool wake;

    msg->next = NULL;
    msg->run = run;
    msg->arg = arg;
    pthread_mutex_lock(&to->inbox_lock);
    wake = to->inbox == NULL;
    *to->inbox_tail = msg;
    to->inbox_tail = &msg->next;
    pthread_mutex_unlock(&to->inbox_lock);

    /* An eventfd counter only overflows after 2^64 - 2 wakes. */
    if (wake && write(to->inbox_fd, &one, sizeof(one)) < 0)
        jg_log_error("cannot wake worker %zu: %s", to->index,
                     strerror(errno));
}

static void
inbox_cb(evutil_socket_t fd, short what, void *arg)
{
    struct jg_server *srv = arg;
    struct jg_message *msg;
    struct jg_message *next;
    uint64_t count;

    (void)what;
    if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        jg_log_error("cannot read the wake-up of worker %zu: %s",
                     srv->index, strerror(errno));

    pthread_mutex_lock(&srv->inbox_lock);
    msg = srv->inbox;
    srv->inbox = NULL;
    srv->inbox_tail = &srv->inbox;
    pthread_mutex_unlock(&srv->inbox_lock);

    for (; msg != NULL; msg = next) {
        next = msg->next;
        msg->run(srv, msg->arg);
        jg_free(msg);
    }
}

/* ---- listeners ------------------------------------------------------ */

static int
bind_unix(const char *path)
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
    return fd;
}

/* Split "host:port" or "[v6]:port"; host is written into hostbuf. */
static int
split_host_port(const char *spec, char *hostbuf, size_t hostlen,
                char *portbuf, size_t portlen)
{
    const char *colon = strrchr(spec, ':');
    const char *host = spec;
    size_t len;

    if (colon == NULL || strlen(colon + 1) == 0 ||
        strlen(colon + 1) >= portlen)
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
    memcpy(portbuf, colon + 1, strlen(colon + 1) + 1);
    return 0;
}

static int
bind_tcp(const char *spec)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
    };
    struct addrinfo *res = NULL;
    char host[256];
    char port[8];
    int one = 1;
    int fd = -1;
    int rc;

    if (split_host_port(spec, host, sizeof(host), port, sizeof(port)) != 0) {
        jg_log_error("invalid listen address \"%s\": expected host:port, "
                     "[ipv6]:port or unix:/path", spec);
        return -1;
    }
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        jg_log_error("cannot resolve listen address %s: %s", spec,
                     gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family,
                res->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        jg_log_error("cannot listen on %s: %s", spec, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static void
log_bound(const char *what, int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[INET6_ADDRSTRLEN];

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

int
jg_server_bind(const char *spec, const char *what)
{
    int fd;

    if (strncmp(spec, "unix:", 5) == 0)
        fd = bind_unix(spec + 5);
    else
        fd = bind_tcp(spec);
    if (fd >= 0)
        log_bound(what, fd);
    return fd;
}

/* An even share of a process-wide limit, at least one. */
static uint64_t
per_worker(uint64_t total, const struct jg_config *cfg)
{
    uint64_t share = total / cfg->workers;

    return share > 0 ? share : 1;
}

static struct jg_http_server *
new_front_end(struct jg_server *srv)
{
    const struct jg_config *cfg = &srv->cfg;
    struct jg_http_limits limits = {
        .max_header_bytes = cfg->max_header_bytes,
        .max_headers = cfg->max_headers,
        .max_uri_bytes = cfg->max_uri_bytes,
        .max_body_bytes = cfg->max_request_body_bytes,
        .header_timeout_ms = cfg->client_header_timeout_ms,
        .idle_timeout_ms = cfg->client_timeout_ms,
        .max_connections = per_worker(cfg->max_connections, cfg),
    };
    struct jg_http_server *front;

    front = jg_http_server_new(srv->base, &limits, jg_request_handle, srv);
    jg_http_set_empty_cb(front, connections_gone, srv);
    return front;
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

static struct jg_upstream *
new_upstream(struct jg_server *srv)
{
    const struct jg_config *cfg = &srv->cfg;
    struct jg_upstream_options uopts = {
        .base_url = cfg->upstream,
        .timeout_ms = cfg->upstream_timeout_ms,
        .connect_timeout_ms = cfg->upstream_connect_timeout_ms,
        .max_connections = per_worker(cfg->upstream_max_connections, cfg),
        .max_response_bytes = cfg->max_passthrough_bytes,
    };
    struct jg_upstream *up = jg_upstream_create(srv->base, &uopts);

    if (up == NULL)
        jg_log_error("cannot create the upstream client for %s",
                     cfg->upstream);
    return up;
}

/* The event loop of one worker, with its wake-up for messages. */
static int
new_loop(struct jg_server *srv)
{
    struct event_config *ec;

    /* The changelist folds the epoll_ctl calls of one loop turn into one. */
    ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    srv->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (srv->base == NULL) {
        jg_log_error("cannot create the event loop");
        return -1;
    }
    /* Activated events run in order, so the batch commits after the
     * callbacks already active in this loop turn. */
    srv->flush_event = event_new(srv->base, -1, 0, flush_cb, srv);
    srv->drain_timer = evtimer_new(srv->base, drain_timeout, srv);

    pthread_mutex_init(&srv->inbox_lock, NULL);
    srv->inbox_tail = &srv->inbox;
    srv->inbox_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (srv->inbox_fd < 0) {
        jg_log_error("cannot create an eventfd: %s", strerror(errno));
        return -1;
    }
    srv->inbox_event = event_new(srv->base, srv->inbox_fd,
                                 EV_READ | EV_PERSIST, inbox_cb, srv);
    event_add(srv->inbox_event, NULL);
    return 0;
}

/*
 * Worker 0's parts: the cache, the shared state and the principal table,
 * and its own upstream client.
 */
static int
open_parts(struct jg_server *srv)
{
    const struct jg_config *cfg = &srv->cfg;
    struct jg_cache_options copts = {
        .dir = cfg->cache_dir,
        .max_bytes = cfg->cache_max_bytes,
        .ttl_s = cfg->terminal_ttl_s,
    };
    struct jg_shared *sh = srv->shared;
    char err[512];

    if (jg_cache_open(&srv->cache, &copts, err, sizeof(err)) != 0) {
        jg_log_error("cannot open the cache: %s", err);
        return -1;
    }
    if (cfg->share_scope == JG_SHARE_CREDENTIAL && load_owner_key(srv) != 0)
        return -1;
    sh->principals = jg_principals_create(cfg->max_principals,
                                          cfg->auth_ttl_s * 1000);
    srv->principals = sh->principals;
    srv->upstream = new_upstream(srv);
    return srv->upstream != NULL ? 0 : -1;
}

/* A further worker, sharing worker 0's listening socket, cache and table. */
static int
init_worker(struct jg_server *w, const struct jg_server *first, size_t index,
            int listen_fd)
{
    int fd;

    w->cfg = first->cfg;
    w->shared = first->shared;
    w->index = index;
    w->started_ms = first->started_ms;
    w->inbox_fd = -1;
    memcpy(w->owner_key, first->owner_key, sizeof(w->owner_key));
    w->principals = first->principals;
    if (new_loop(w) != 0)
        return -1;
    w->cache = jg_cache_share(first->cache);
    w->upstream = new_upstream(w);
    if (w->cache == NULL || w->upstream == NULL)
        return -1;

    /* A duplicate refers to the same socket, so the workers take turns
     * at one accept queue; each listener closes its own descriptor. */
    w->front = new_front_end(w);
    fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        jg_log_error("cannot duplicate the listening socket: %s",
                     strerror(errno));
        return -1;
    }
    return jg_http_listen_fd(w->front, fd);
}

int
jg_server_init(struct jg_server *srv, const struct jg_config *cfg)
{
    struct jg_shared *sh;
    size_t i;
    int fd;

    memset(srv, 0, sizeof(*srv));
    srv->cfg = *cfg;
    srv->started_ms = jg_now_ms();
    srv->inbox_fd = -1;

    sh = jg_calloc(1, sizeof(*sh));
    srv->shared = sh;
    pthread_mutex_init(&sh->flights_lock, NULL);
    sh->flight_buckets = 1024;
    sh->flights = jg_calloc(sh->flight_buckets, sizeof(*sh->flights));
    sh->worker_count = cfg->workers;
    sh->workers = jg_calloc(sh->worker_count, sizeof(*sh->workers));
    sh->workers[0] = srv;

    if (new_loop(srv) != 0 || open_parts(srv) != 0)
        return -1;

    srv->front = new_front_end(srv);
    fd = jg_server_bind(cfg->listen, "listening");
    if (fd < 0 || jg_http_listen_fd(srv->front, fd) != 0)
        return -1;

    for (i = 1; i < sh->worker_count; i++) {
        sh->workers[i] = jg_calloc(1, sizeof(*sh->workers[i]));
        if (init_worker(sh->workers[i], srv, i, fd) != 0)
            return -1;
    }

    if (cfg->admin_listen[0] != '\0' && jg_admin_init(srv) != 0)
        return -1;

    srv->sigterm_event = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    srv->sigint_event = evsignal_new(srv->base, SIGINT, on_signal, srv);
    evsignal_add(srv->sigterm_event, NULL);
    evsignal_add(srv->sigint_event, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* Block SIGTERM and SIGINT in the calling thread; old gets the former mask. */
static void
block_stop_signals(sigset_t *old)
{
    sigset_t block;

    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, old);
}

static void *
worker_main(void *arg)
{
    struct jg_server *w = arg;

    if (event_base_dispatch(w->base) < 0) {
        jg_log_error("the event loop of worker %zu failed", w->index);
        return w;
    }
    return NULL;
}

int
jg_server_run(struct jg_server *srv)
{
    struct jg_shared *sh = srv->shared;
    sigset_t old;
    size_t started = 1;
    int status = 0;
    size_t i;

    /* Threads inherit the mask: SIGTERM and SIGINT stay on this thread,
     * whose loop drains them all. */
    block_stop_signals(&old);
    for (i = 1; i < sh->worker_count; i++) {
        if (pthread_create(&sh->workers[i]->thread, NULL, worker_main,
                           sh->workers[i]) != 0) {
            jg_log_error("cannot start worker %zu", i);
            status = 1;
            break;
        }
        started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (status == 0) {
        jg_log_info("ready");
        if (event_base_dispatch(srv->base) < 0) {
            jg_log_error("the event loop failed");
            status = 1;
        }
    } else {
        on_signal(SIGTERM, 0, srv);
    }

    for (i = 1; i < started; i++) {
        void *failed = NULL;

        pthread_join(sh->workers[i]->thread, &failed);
        if (failed != NULL)
            status = 1;
    }
    return status;
}

void
jg_server_sum_stats(const struct jg_server *srv, struct jg_metrics *m,
                    struct jg_cache_stats *cs, struct jg_http_stats *hs,
                    uint64_t *connections, uint64_t *upstream_active)
{
    const struct jg_shared *sh = srv->shared;
    size_t i;

    *connections = 0;
    *upstream_active = 0;
    for (i = 0; i < sh->worker_count; i++) {
        const struct jg_server *w = sh->workers[i];

        jg_counters_add((uint64_t *)m, (const uint64_t *)&w->metrics,
                        sizeof(*m) / sizeof(uint64_t));
        jg_counters_add((uint64_t *)cs,
                        (const uint64_t *)jg_cache_stats(w->cache),
                        sizeof(*cs) / sizeof(uint64_t));
        jg_counters_add((uint64_t *)hs,
                        (const uint64_t *)jg_http_stats(w->front),
                        sizeof(*hs) / sizeof(uint64_t));
        *connections += jg_http_connections(w->front);
        *upstream_active += jg_upstream_active(w->upstream);
    }
}

/* Free the parts of one worker; the shared ones belong to worker 0. */
static void
free_worker(struct jg_server *w)
{
    /* Answers posted after a loop ended at its drain deadline. */
    if (w->inbox_event != NULL)
        inbox_cb(w->inbox_fd, EV_READ, w);
    jg_http_server_free(w->front);
    if (w->upstream != NULL)
        jg_upstream_free(w->upstream);
    if (w->cache != NULL)
        jg_cache_close(w->cache);
    jg_request_settle(w);
    if (w->flush_event != NULL)
        event_free(w->flush_event);
    if (w->drain_timer != NULL)
        event_free(w->drain_timer);
    if (w->inbox_event != NULL) {
        event_free(w->inbox_event);
        pthread_mutex_destroy(&w->inbox_lock);
    }
    if (w->inbox_fd >= 0)
        close(w->inbox_fd);
    if (w->base != NULL)
        event_base_free(w->base);
}

void
jg_server_free(struct jg_server *srv)
{
    struct jg_shared *sh = srv->shared;
    size_t i;

    if (sh == NULL)
        return;

    /*
     * Freeing the signal events restores the default actions, and a second
     * SIGTERM would then kill the process while it commits the last cache
     * writes. Blocked, it stays pending until the exit.
     */
    block_stop_signals(NULL);

    for (i = 1; i < sh->worker_count; i++) {
        if (sh->workers[i] == NULL)
            continue;
        free_worker(sh->workers[i]);
        jg_free(sh->workers[i]);
    }
    if (srv->admin != NULL)
        evhttp_free(srv->admin);
    if (srv->sigterm_event != NULL)
        event_free(srv->sigterm_event);
    if (srv->sigint_event != NULL)
        event_free(srv->sigint_event);
    free_worker(srv);
    if (sh->principals != NULL)
        jg_principals_free(sh->principals);
    if (strncmp(srv->cfg.listen, "unix:", 5) == 0)
        unlink(srv->cfg.listen + 5);
    pthread_mutex_destroy(&sh->flights_lock);
    jg_free(sh->flights);
    jg_free(sh->workers);
    jg_free(sh);
}
