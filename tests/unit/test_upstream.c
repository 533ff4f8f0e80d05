/*
 * Tests of the upstream client against real origins on 127.0.0.1 in the
 * same process and on the same event_base: an evhttp server for ordinary
 * exchanges, and a scripted raw socket server for exact response bytes,
 * faults and connection counts. Every loop run is bounded by a deadline
 * event that fails the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "jobgate/jg_log.h"
#include "jobgate/jg_upstream.h"
#include "jobgate/jg_util.h"

/* Far above any expected wait; reaching it fails the test. */
#define DEADLINE_S 10

/* ---- Harness: loop, deadline, recorded outcomes ------------------------ */

struct harness {
    struct event_base *base;
    struct event *deadline;
    bool deadline_hit;
    int callbacks;     /* fetch callbacks run so far */
    int expected;      /* the loop stops once callbacks reaches this */
};

struct outcome {
    struct harness *h;
    int calls;
    enum jg_fetch_error error;
    long status;
    char *body;
    size_t body_len;
    struct evkeyvalq headers;
    uint64_t elapsed_ms;
};

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct harness *h = arg;

    (void)fd;
    (void)what;
    h->deadline_hit = true;
    event_base_loopbreak(h->base);
}

static void
harness_init(struct harness *h)
{
    memset(h, 0, sizeof(*h));
    h->base = event_base_new();
    assert_non_null(h->base);
    h->deadline = evtimer_new(h->base, on_deadline, h);
    assert_non_null(h->deadline);
}

static void
harness_free(struct harness *h)
{
    event_free(h->deadline);
    event_base_free(h->base);
}

/* Run the loop until `expected` callbacks in total have run. */
static void
run_until_callbacks(struct harness *h, int expected)
{
    struct timeval tv = {DEADLINE_S, 0};

    h->expected = expected;
    evtimer_add(h->deadline, &tv);
    if (h->callbacks < expected)
        event_base_dispatch(h->base);
    evtimer_del(h->deadline);
    assert_false(h->deadline_hit);
    assert_int_equal(h->callbacks, expected);
}

static void
outcome_init(struct outcome *o, struct harness *h)
{
    memset(o, 0, sizeof(*o));
    o->h = h;
    TAILQ_INIT(&o->headers);
}

static void
outcome_clear(struct outcome *o)
{
    evhttp_clear_headers(&o->headers);
    free(o->body);
    o->body = NULL;
}

static void
record_outcome(const struct jg_upstream_response *r, void *arg)
{
    struct outcome *o = arg;
    struct evkeyval *kv;

    o->calls++;
    o->error = r->error;
    o->status = r->status;
    o->elapsed_ms = r->elapsed_ms;
    o->body_len = evbuffer_get_length(r->body);
    o->body = calloc(1, o->body_len + 1);
    evbuffer_copyout(r->body, o->body, o->body_len);
    TAILQ_FOREACH(kv, r->headers, next)
        evhttp_add_header(&o->headers, kv->key, kv->value);

    o->h->callbacks++;
    if (o->h->callbacks >= o->h->expected)
        event_base_loopbreak(o->h->base);
}

static const char *
header(struct outcome *o, const char *name)
{
    return evhttp_find_header(&o->headers, name);
}

static struct curl_slist *
header_list(const char *first, ...)
{
    struct curl_slist *list = NULL;
    const char *item;
    va_list ap;

    va_start(ap, first);
    for (item = first; item != NULL; item = va_arg(ap, const char *))
        list = curl_slist_append(list, item);
    va_end(ap);
    return list;
}

static int
bound_port(evutil_socket_t fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);

    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    return ntohs(sin.sin_port);
}

static char *
url_for_port(int port)
{
    char *url = malloc(64);

    snprintf(url, 64, "http://127.0.0.1:%d", port);
    return url;
}

static struct jg_upstream *
upstream_for(struct harness *h, const char *base_url, uint64_t max_conns)
{
    struct jg_upstream_options opts = {
        .base_url = base_url,
        .timeout_ms = 5000,
        .connect_timeout_ms = 2000,
        .max_connections = max_conns,
        .max_response_bytes = 1024 * 1024,
    };

    return jg_upstream_create(h->base, &opts);
}

/* ---- evhttp origin ----------------------------------------------------- */

struct http_origin {
    struct evhttp *http;
    char *url;
    int requests;
    char method[16];
    char *uri;
    char *body;
    struct evkeyvalq headers;       /* of the newest request */
};

static const char *
method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    default:
        return "OTHER";
    }
}

static void
remember_request(struct http_origin *o, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    struct evkeyval *kv;

    o->requests++;
    snprintf(o->method, sizeof(o->method), "%s",
             method_name(evhttp_request_get_command(req)));
    free(o->uri);
    o->uri = strdup(evhttp_request_get_uri(req));
    free(o->body);
    o->body = calloc(1, len + 1);
    evbuffer_copyout(in, o->body, len);
    evhttp_clear_headers(&o->headers);
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next)
        evhttp_add_header(&o->headers, kv->key, kv->value);
}

/*
 * /hello: 200 with a text body. /status/N: status N. /echo: 200 with the
 * request body. /bytes/N: N bytes of 'x'. Anything else: 200 "ok".
 */
static void
serve_http(struct evhttp_request *req, void *arg)
{
    struct http_origin *o = arg;
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evbuffer *reply = evbuffer_new();
    const char *uri = evhttp_request_get_uri(req);
    int status = 200;

    remember_request(o, req);

    if (strcmp(uri, "/hello") == 0) {
        evhttp_add_header(out, "Content-Type", "text/plain");
        evhttp_add_header(out, "X-End-To-End", "kept");
        evbuffer_add_printf(reply, "hello world");
    } else if (strncmp(uri, "/status/", 8) == 0) {
        status = (int)strtol(uri + 8, NULL, 10);
        evbuffer_add_printf(reply, "status %d", status);
    } else if (strcmp(uri, "/echo") == 0) {
        evbuffer_add_buffer(reply, evhttp_request_get_input_buffer(req));
    } else if (strncmp(uri, "/bytes/", 7) == 0) {
        long n = strtol(uri + 7, NULL, 10);
        char *fill = malloc((size_t)n);

        memset(fill, 'x', (size_t)n);
        evbuffer_add(reply, fill, (size_t)n);
        free(fill);
    } else {
        evbuffer_add_printf(reply, "ok");
    }

    evhttp_send_reply(req, status, "Scripted", reply);
    evbuffer_free(reply);
}

static void
http_origin_start(struct http_origin *o, struct harness *h)
{
    struct evhttp_bound_socket *bound;
    struct evconnlistener *listener;

    memset(o, 0, sizeof(*o));
    TAILQ_INIT(&o->headers);
    o->http = evhttp_new(h->base);
    assert_non_null(o->http);
    evhttp_set_allowed_methods(o->http,
                               EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                                   EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                   EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                   EVHTTP_REQ_PATCH);
    evhttp_set_gencb(o->http, serve_http, o);
    bound = evhttp_bind_socket_with_handle(o->http, "127.0.0.1", 0);
    assert_non_null(bound);
    listener = evhttp_bound_socket_get_listener(bound);
    o->url = url_for_port(bound_port(evconnlistener_get_fd(listener)));
}

static void
http_origin_stop(struct http_origin *o)
{
    evhttp_free(o->http);
    evhttp_clear_headers(&o->headers);
    free(o->uri);
    free(o->body);
    free(o->url);
}

/* ---- Raw origin: scripted bytes, counted connections ------------------- */

enum raw_mode {
    RAW_REPLY_KEEP,   /* reply to each request head, keep the connection */
    RAW_REPLY_CLOSE,  /* reply to the first request head, then close */
    RAW_SILENT,       /* accept and read, never reply */
};

struct raw_conn {
    struct raw_origin *origin;
    struct bufferevent *bev;
    struct raw_conn *next;
};

struct raw_origin {
    struct harness *h;
    struct evconnlistener *listener;
    char *url;
    enum raw_mode mode;
    const char *reply;
    int accepted;        /* connections accepted in total */
    int open;            /* connections open now */
    int max_open;
    int requests;        /* request heads read */
    int break_at_requests; /* stop the loop when requests reaches it */
    struct raw_conn *conns;
};

static void
raw_conn_close(struct raw_conn *c)
{
    struct raw_origin *o = c->origin;
    struct raw_conn **p;

    for (p = &o->conns; *p != NULL; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    bufferevent_free(c->bev);
    free(c);
    o->open--;
}

static void
raw_on_written(struct bufferevent *bev, void *arg)
{
    struct raw_conn *c = arg;

    (void)bev;
    if (c->origin->mode == RAW_REPLY_CLOSE)
        raw_conn_close(c);
}

static void
raw_on_read(struct bufferevent *bev, void *arg)
{
    struct raw_conn *c = arg;
    struct raw_origin *o = c->origin;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_ptr end;

    for (;;) {
        end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0)
            break;
        evbuffer_drain(in, (size_t)end.pos + 4);
        o->requests++;
        if (o->mode != RAW_SILENT)
            bufferevent_write(bev, o->reply, strlen(o->reply));
        if (o->break_at_requests > 0 && o->requests == o->break_at_requests)
            event_base_loopbreak(o->h->base);
    }
}

static void
raw_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        raw_conn_close(arg);
}

static void
raw_on_accept(struct evconnlistener *listener, evutil_socket_t fd,
              struct sockaddr *addr, int addr_len, void *arg)
{
    struct raw_origin *o = arg;
    struct raw_conn *c = calloc(1, sizeof(*c));

    (void)listener;
    (void)addr;
    (void)addr_len;
    c->origin = o;
    c->bev = bufferevent_socket_new(o->h->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, raw_on_read, raw_on_written, raw_on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->next = o->conns;
    o->conns = c;

    o->accepted++;
    o->open++;
    if (o->open > o->max_open)
        o->max_open = o->open;
}

static void
raw_origin_start(struct raw_origin *o, struct harness *h, enum raw_mode mode,
                 const char *reply)
{
    struct sockaddr_in sin;

    memset(o, 0, sizeof(*o));
    o->h = h;
    o->mode = mode;
    o->reply = reply;

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = 0;
    o->listener = evconnlistener_new_bind(
        h->base, raw_on_accept, o, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
        128, (struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(o->listener);
    o->url = url_for_port(bound_port(evconnlistener_get_fd(o->listener)));
}

static void
raw_origin_stop(struct raw_origin *o)
{
    while (o->conns != NULL)
        raw_conn_close(o->conns);
    evconnlistener_free(o->listener);
    free(o->url);
}

/* Run the loop until the raw origin has read `n` request heads. */
static void
run_until_requests(struct harness *h, struct raw_origin *o, int n)
{
    struct timeval tv = {DEADLINE_S, 0};

    o->break_at_requests = n;
    evtimer_add(h->deadline, &tv);
    if (o->requests < n)
        event_base_dispatch(h->base);
    evtimer_del(h->deadline);
    o->break_at_requests = 0;
    assert_false(h->deadline_hit);
    assert_int_equal(o->requests, n);
}

/* One fetch of `target` from a fresh client; the outcome lands in `out`. */
static void
fetch_once(struct harness *h, const char *base_url, const char *target,
           struct outcome *out)
{
    struct jg_upstream *up = upstream_for(h, base_url, 4);

    outcome_init(out, h);
    assert_non_null(jg_upstream_fetch(up, "GET", target, NULL, NULL, 0,
                                      record_outcome, out));
    run_until_callbacks(h, h->callbacks + 1);
    assert_int_equal(out->calls, 1);
    assert_int_equal(jg_upstream_active(up), 0);
    jg_upstream_free(up);
}

/* ---- Successful exchanges ---------------------------------------------- */

static void
test_get_returns_body_and_headers(void **state)
{
    struct harness h;
    struct http_origin origin;
    struct outcome out;

    (void)state;
    harness_init(&h);
    http_origin_start(&origin, &h);

    fetch_once(&h, origin.url, "/hello", &out);

    assert_int_equal(out.error, JG_FETCH_OK);
    assert_int_equal(out.status, 200);
    assert_string_equal(out.body, "hello world");
    assert_string_equal(header(&out, "X-End-To-End"), "kept");
    assert_string_equal(header(&out, "Content-Type"), "text/plain");
    /* The server recomputes Content-Length for what it sends. */
    assert_null(header(&out, "Content-Length"));
    assert_string_equal(origin.method, "GET");
    assert_string_equal(origin.uri, "/hello");

    outcome_clear(&out);
    http_origin_stop(&origin);
    harness_free(&h);
}

static void
test_hop_by_hop_headers_removed(void **state)
{
    static const char reply[] =
        "HTTP/1.1 200 OK\r\n"
        "Connection: keep-alive, X-Hop\r\n"
        "X-Hop: secret\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Authenticate: Basic realm=\"x\"\r\n"
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        "TE: trailers\r\n"
        "Trailer: X-Trail\r\n"
        "Upgrade: h2c\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "X-Kept: yes\r\n"
        "Cache-Control: no-store\r\n"
        "Transfer-Encoding: chunked\r\n"
        "\r\n"
        "5\r\nhello\r\n"
        "6\r\n world\r\n"
        "0\r\n"
        "X-Trail: late\r\n"
        "X-Trail-Two: later\r\n"
        "\r\n";
    static const char *const dropped[] = {
        "Connection", "X-Hop", "Keep-Alive", "Proxy-Authenticate",
        "Proxy-Authorization", "TE", "Trailer", "Upgrade",
        "Proxy-Connection", "Transfer-Encoding", "Content-Length",
        "X-Trail", "X-Trail-Two",
    };
    struct harness h;
    struct raw_origin origin;
    struct outcome out;
    size_t i;

    (void)state;
    harness_init(&h);
    raw_origin_start(&origin, &h, RAW_REPLY_KEEP, reply);

    fetch_once(&h, origin.url, "/hop", &out);

    assert_int_equal(out.error, JG_FETCH_OK);
    assert_int_equal(out.status, 200);
    assert_string_equal(out.body, "hello world");
    assert_string_equal(header(&out, "X-Kept"), "yes");
    assert_string_equal(header(&out, "Cache-Control"), "no-store");
    for (i = 0; i < JG_ARRAY_LEN(dropped); i++) {
        if (header(&out, dropped[i]) != NULL)
            fail_msg("header %s was relayed", dropped[i]);
    }

    outcome_clear(&out);
    raw_origin_stop(&origin);
    harness_free(&h);
}

static void
test_interim_response_resets_headers(void **state)
{
    static const char reply[] =
        "HTTP/1.1 100 Continue\r\n"
        "X-Early: 1\r\n"
        "\r\n"
        "HTTP/1.1 201 Created\r\n"
        "X-Final: 1\r\n"
        "Content-Length: 4\r\n"
        "\r\n"
        "done";
    struct harness h;
    struct raw_origin origin;
    struct outcome out;

    (void)state;
    harness_init(&h);
    raw_origin_start(&origin, &h, RAW_REPLY_KEEP, reply);

    fetch_once(&h, origin.url, "/interim", &out);

    assert_int_equal(out.error, JG_FETCH_OK);
    assert_int_equal(out.status, 201);
    assert_string_equal(out.body, "done");
    assert_null(header(&out, "X-Early"));
    assert_string_equal(header(&out, "X-Final"), "1");

    outcome_clear(&out);
    raw_origin_stop(&origin);
    harness_free(&h);
}

static void
test_folded_header_joined(void **state)
{
    static const char reply[] =
        "HTTP/1.1 200 OK\r\n"
        "X-Folded: first\r\n"
        "   second\r\n"
        "\tthird\r\n"
        "X-Next: n\r\n"
        "Content-Length: 0\r\n"
        "\r\n";
    struct harness h;
    struct raw_origin origin;
    struct outcome out;

    (void)state;
    harness_init(&h);
    raw_origin_start(&origin, &h, RAW_REPLY_KEEP, reply);

    fetch_once(&h, origin.url, "/fold", &out);

    assert_int_equal(out.error, JG_FETCH_OK);
    assert_string_equal(header(&out, "X-Folded"), "first second third");
    assert_string_equal(header(&out, "X-Next"), "n");

    outcome_clear(&out);
    raw_origin_stop(&origin);
    harness_free(&h);
}

static void
test_content_encoding_passes_through(void **state)
{
    /* Not valid gzip: decoding it would fail the fetch. */
    static const char reply[] =
        "HTTP/1.1 200 OK\r\n"
        "Content-Encoding: gzip\r\n"
        "Content-Length: 9\r\n"
        "\r\n"
        "not-gzip!";
    struct harness h;
    struct raw_origin origin;
    struct outcome out;

    (void)state;
    harness_init(&h);
    raw_origin_start(&origin, &h, RAW_REPLY_KEEP, reply);

    fetch_once(&h, origin.url, "/gz", &out);

    assert_int_equal(out.error, JG_FETCH_OK);
    assert_string_equal(out.body, "not-gzip!");
    assert_string_equal(header(&out, "Content-Encoding"), "gzip");

    outcome_clear(&out);
    raw_origin_stop(&origin);
    harness_free(&h);
}

static void
test_error_statuses_are_ok(void **state)
{
    static const long statuses[] = {404, 500, 503};
    struct harness h;
    struct http_origin origin;
    size_t i;

    (void)state;
    harness_init(&h);
    http_origin_start(&origin, &h);

    for (i = 0; i < JG_ARRAY_LEN(statuses); i++) {
        struct outcome out;
        char target[32];

        snprintf(target, sizeof(target), "/status/%ld", statuses[i]);
        fetch_once(&h, origin.url, target, &out);
        assert_int_equal(out.error, JG_FETCH_OK);
        assert_int_equal(out.status, statuses[i]);
        outcome_clear(&out);
    }

    http_origin_stop(&origin);
    harness_free(&h);
}

static void
test_target_relayed_as_is(void **state)
{
    struct harness h;
    struct http_origin origin;
    struct outcome out;

    (void)state;
    harness_init(&h);
    http_origin_start(&origin, &h);

    fetch_once(&h, origin.url, "/a/../v2/org-jobs/x?job_id=1&b=%2F", &out);

    assert_int_equal(out.error, JG_FETCH_OK);
    assert_string_equal(origin.uri, "/a/../v2/org-jobs/x?job_id=1&b=%2F");

    outcome_clear(&out);
    http_origin_stop(&origin);
    harness_free(&h);
}

/* ---- Requests: headers, methods, bodies -------------------------------- */

static void
test_post_sends_headers_and_body(void **state)
{
    static const char body[] = "{\"api_key\":\"k\"}";
    struct harness h;
    struct http_origin origin;
    struct jg_upstream *up;
    struct outcome out;
    struct curl_slist *headers;

    (void)state;
    harness_init(&h);
    http_origin_start(&origin, &h);
    up = upstream_for(&h, origin.url, 4);
    outcome_init(&out, &h);
    headers = header_list("Galileo-API-Key: secret-key",
                          "Content-Type: application/json",
                          "X-Galileo-SDK: test/1", NULL);

    jg_upstream_fetch(up, "POST", "/echo", headers, body, strlen(body),
                      record_outcome, &out);
    run_until_callbacks(&h, 1);

    assert_int_equal(out.error, JG_FETCH_OK);
    assert_int_equal(out.status, 200);
    assert_string_equal(out.body, body);
    assert_string_equal(origin.method, "POST");
    assert_string_equal(origin.body, body);
    assert_string_equal(evhttp_find_header(&origin.headers, "Galileo-API-Key"),
                        "secret-key");
    assert_string_equal(evhttp_find_header(&origin.headers, "Content-Type"),
                        "application/json");
    assert_string_equal(evhttp_find_header(&origin.headers, "X-Galileo-SDK"),
                        "test/1");
    assert_string_equal(evhttp_find_header(&origin.headers, "Content-Length"),
                        "15");
    /* Nothing libcurl would add on its own reaches the origin. */
    assert_null(evhttp_find_header(&origin.headers, "Expect"));
    assert_null(evhttp_find_header(&origin.headers, "Accept"));
    assert_null(evhttp_find_header(&origin.headers, "Accept-Encoding"));

    outcome_clear(&out);
    jg_upstream_free(up);
    http_origin_stop(&origin);
    harness_free(&h);
}

static void
test_methods_reach_origin(void **state)
{
    static const struct {
        const char *method;
        const char *body;
        const char *response_body;
    } cases[] = {
        {"GET", "", "ok"},
        {"HEAD", "", ""},
        {"PUT", "put-body", "ok"},
        {"PATCH", "patch-body", "ok"},
        {"DELETE", "", "ok"},
        {"DELETE", "delete-body", "ok"},
        {"OPTIONS", "", "ok"},
        {"POST", "", "ok"},
    };
    struct harness h;
    struct http_origin origin;
    struct jg_upstream *up;
    size_t i;

    (void)state;
    harness_init(&h);
    http_origin_start(&origin, &h);
    up = upstream_for(&h, origin.url, 4);

    for (i = 0; i < JG_ARRAY_LEN(cases); i++) {
        struct outcome out;
        size_t len = strlen(cases[i].body);

        outcome_init(&out, &h);
        jg_upstream_fetch(up, cases[i].method, "/m", NULL, cases[i].body, len,
                          record_outcome, &out);
        run_until_callbacks(&h, (int)i + 1);

        assert_int_equal(out.error, JG_FETCH_OK);
        assert_int_equal(out.status, 200);
        assert_string_equal(out.body, cases[i].response_body);
        assert_string_equal(origin.method, cases[i].method);
        assert_string_equal(origin.body, cases[i].body);
        /* libcurl's default form Content-Type is suppressed. */
        assert_null(evhttp_find_header(&origin.headers, "Content-Type"));
        outcome_clear(&out);
    }

    jg_upstream_free(up);
    http_origin_stop(&origin);
    harness_free(&h);
}

/* ---- Failures ---------------------------------------------------------- */

static void
test_connection_refused(void **state)
{
    struct harness h;
    struct sockaddr_in sin;
    struct outcome out;
    char *url;
    int fd;

    (void)state;
    harness_init(&h);

    /* A port that was just free and now has no listener. */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    url = url_for_port(bound_port(fd));
    close(fd);

    fetch_once(&h, url, "/refused", &out);

    assert_int_equal(out.error, JG_FETCH_CONNECT);
    assert_int_equal(out.status, 0);

    outcome_clear(&out);
    free(url);
    harness_free(&h);
}

static void
test_silent_origin_times_out(void **state)
{
    struct harness h;
    struct raw_origin origin;
    struct jg_upstream *up;
    struct outcome out;
    struct jg_upstream_options opts = {
        .timeout_ms = 200,
        .connect_timeout_ms = 1000,
        .max_connections = 4,
        .max_response_bytes = 1024,
    };

    (void)state;
    harness_init(&h);
    raw_origin_start(&origin, &h, RAW_SILENT, NULL);
    opts.base_url = origin.url;
    up = jg_upstream_create(h.base, &opts);
    outcome_init(&out, &h);

    jg_upstream_fetch(up, "GET", "/slow", NULL, NULL, 0, record_outcome, &out);
    run_until_callbacks(&h, 1);

    assert_int_equal(out.error, JG_FETCH_TIMEOUT);
    assert_int_equal(out.status, 0);
    assert_int_equal(origin.requests, 1);
    /* The deadline, not the loop's safety limit, ended the fetch. */
    assert_true(out.elapsed_ms >= 190);
    assert_true(out.elapsed_ms < 2000);

    outcome_clear(&out);
    jg_upstream_free(up);
    raw_origin_stop(&origin);
    harness_free(&h);
}

static void
test_truncated_body_is_protocol_error(void **state)
{
    static const char reply[] =
        "HTTP/1.1 200 OK\r\n"
        "Content-Length: 100\r\n"
        "\r\n"
        "0123456789";
    struct harness h;
    struct raw_origin origin;
    struct outcome out;

    (void)state;
    harness_init(&h);
    raw_origin_start(&origin, &h, RAW_REPLY_CLOSE, reply);

    fetch_once(&h, origin.url, "/short", &out);

    assert_int_equal(out.error, JG_FETCH_PROTOCOL);
    assert_int_equal(out.status, 0);

    outcome_clear(&out);
    raw_origin_stop(&origin);
    harness_free(&h);
}

static void
test_garbage_reply_is_protocol_error(void **state)
{
    struct harness h;
    struct raw_origin origin;
    struct outcome out;

    (void)state;
    harness_init(&h);
    raw_origin_start(&origin, &h, RAW_REPLY_CLOSE, "SSH-2.0-OpenSSH\r\n\r\n");

    fetch_once(&h, origin.url, "/garbage", &out);

    assert_int_equal(out.error, JG_FETCH_PROTOCOL);

    outcome_clear(&out);
    raw_origin_stop(&origin);
    harness_free(&h);
}

static void
test_body_size_limit(void **state)
{
    static const struct {
        const char *target;
        enum jg_fetch_error error;
    } cases[] = {
        {"/bytes/1000", JG_FETCH_OK},
        {"/bytes/1001", JG_FETCH_TOO_LARGE},
        {"/bytes/200000", JG_FETCH_TOO_LARGE},
    };
    struct harness h;
    struct http_origin origin;
    struct jg_upstream *up;
    struct jg_upstream_options opts = {
        .timeout_ms = 5000,
        .connect_timeout_ms = 1000,
        .max_connections = 4,
        .max_response_bytes = 1000,
    };
    size_t i;

    (void)state;
    harness_init(&h);
    http_origin_start(&origin, &h);
    opts.base_url = origin.url;
    up = jg_upstream_create(h.base, &opts);

    for (i = 0; i < JG_ARRAY_LEN(cases); i++) {
        struct outcome out;

        outcome_init(&out, &h);
        jg_upstream_fetch(up, "GET", cases[i].target, NULL, NULL, 0,
                          record_outcome, &out);
        run_until_callbacks(&h, (int)i + 1);
        if (out.error != cases[i].error)
            fail_msg("%s: got %s", cases[i].target,
                     jg_fetch_error_name(out.error));
        if (cases[i].error == JG_FETCH_OK)
            assert_int_equal(out.body_len, 1000);
        outcome_clear(&out);
    }

    jg_upstream_free(up);
    http_origin_stop(&origin);
    harness_free(&h);
}

/* Records whether the callback ran inside jg_upstream_fetch. */
struct reentry_probe {
    struct outcome out;
    bool inside_fetch;
    bool ran_inside_fetch;
};

static void
probe_callback(const struct jg_upstream_response *r, void *arg)
{
    struct reentry_probe *probe = arg;

    if (probe->inside_fetch)
        probe->ran_inside_fetch = true;
    record_outcome(r, &probe->out);
}

static void
test_bad_target_fails_from_loop(void **state)
{
    static const char *const targets[] = {"@127.0.0.2/x", "no-slash", ""};
    struct harness h;
    struct http_origin origin;
    struct jg_upstream *up;
    size_t i;

    (void)state;
    harness_init(&h);
    http_origin_start(&origin, &h);
    up = upstream_for(&h, origin.url, 4);

    for (i = 0; i < JG_ARRAY_LEN(targets); i++) {
        struct reentry_probe probe;

        memset(&probe, 0, sizeof(probe));
        outcome_init(&probe.out, &h);
        probe.inside_fetch = true;
        assert_non_null(jg_upstream_fetch(up, "GET", targets[i], NULL, NULL,
                                          0, probe_callback, &probe));
        probe.inside_fetch = false;
        assert_int_equal(probe.out.calls, 0);
        assert_int_equal(jg_upstream_active(up), 1);

        run_until_callbacks(&h, (int)i + 1);
        assert_false(probe.ran_inside_fetch);
        assert_int_equal(probe.out.error, JG_FETCH_PROTOCOL);
        outcome_clear(&probe.out);
    }
    assert_int_equal(origin.requests, 0);

    jg_upstream_free(up);
    http_origin_stop(&origin);
    harness_free(&h);
}

static void
test_unsupported_scheme_fails_from_loop(void **state)
{
    struct harness h;
    struct jg_upstream *up;
    struct reentry_probe probe;

    (void)state;
    harness_init(&h);
    up = upstream_for(&h, "ftp://127.0.0.1:1", 4);
    memset(&probe, 0, sizeof(probe));
    outcome_init(&probe.out, &h);

    probe.inside_fetch = true;
    jg_upstream_fetch(up, "GET", "/x", NULL, NULL, 0, probe_callback, &probe);
    probe.inside_fetch = false;
    run_until_callbacks(&h, 1);

    assert_false(probe.ran_inside_fetch);
    assert_int_equal(probe.out.error, JG_FETCH_PROTOCOL);

    outcome_clear(&probe.out);
    jg_upstream_free(up);
    harness_free(&h);
}

/* ---- Connection pool --------------------------------------------------- */

static const char ok_reply[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Length: 2\r\n"
    "\r\n"
    "ok";

static void
test_concurrent_fetches_share_pool(void **state)
{
    enum { FETCHES = 50 };
    struct harness h;
    struct raw_origin origin;
    struct jg_upstream *up;
    struct outcome *outs = calloc(FETCHES, sizeof(*outs));
    int i;

    (void)state;
    harness_init(&h);
    raw_origin_start(&origin, &h, RAW_REPLY_KEEP, ok_reply);
    up = upstream_for(&h, origin.url, 4);

    for (i = 0; i < FETCHES; i++) {
        outcome_init(&outs[i], &h);
        jg_upstream_fetch(up, "GET", "/many", NULL, NULL, 0, record_outcome,
                          &outs[i]);
    }
    assert_int_equal(jg_upstream_active(up), FETCHES);
    run_until_callbacks(&h, FETCHES);

    for (i = 0; i < FETCHES; i++) {
        assert_int_equal(outs[i].calls, 1);
        assert_int_equal(outs[i].error, JG_FETCH_OK);
        assert_int_equal(outs[i].status, 200);
        assert_string_equal(outs[i].body, "ok");
        outcome_clear(&outs[i]);
    }
    assert_int_equal(origin.requests, FETCHES);
    assert_true(origin.accepted >= 1);
    assert_true(origin.accepted <= 4);
    assert_true(origin.max_open <= 4);
    assert_int_equal(jg_upstream_active(up), 0);

    jg_upstream_free(up);
    raw_origin_stop(&origin);
    harness_free(&h);
    free(outs);
}

static void
test_sequential_fetches_reuse_connection(void **state)
{
    struct harness h;
    struct raw_origin origin;
    struct jg_upstream *up;
    struct outcome first;
    struct outcome second;

    (void)state;
    harness_init(&h);
    raw_origin_start(&origin, &h, RAW_REPLY_KEEP, ok_reply);
    up = upstream_for(&h, origin.url, 4);
    outcome_init(&first, &h);
    outcome_init(&second, &h);

    jg_upstream_fetch(up, "GET", "/one", NULL, NULL, 0, record_outcome,
                      &first);
    run_until_callbacks(&h, 1);
    jg_upstream_fetch(up, "GET", "/two", NULL, NULL, 0, record_outcome,
                      &second);
    run_until_callbacks(&h, 2);

    assert_int_equal(first.error, JG_FETCH_OK);
    assert_int_equal(second.error, JG_FETCH_OK);
    assert_int_equal(origin.requests, 2);
    assert_int_equal(origin.accepted, 1);

    outcome_clear(&first);
    outcome_clear(&second);
    jg_upstream_free(up);
    raw_origin_stop(&origin);
    harness_free(&h);
}

/* ---- Cancel and re-entrancy -------------------------------------------- */

static void
test_cancel_before_loop_runs(void **state)
{
    struct harness h;
    struct http_origin origin;
    struct jg_upstream *up;
    struct outcome cancelled;
    struct outcome sentinel;
    struct jg_fetch *fetch;

    (void)state;
    harness_init(&h);
    http_origin_start(&origin, &h);
    up = upstream_for(&h, origin.url, 4);
    outcome_init(&cancelled, &h);
    outcome_init(&sentinel, &h);

    fetch = jg_upstream_fetch(up, "GET", "/cancelled", NULL, NULL, 0,
                              record_outcome, &cancelled);
    jg_upstream_cancel(fetch);
    assert_int_equal(jg_upstream_active(up), 0);

    /* The sentinel's reply shows the loop ran past the cancelled start. */
    jg_upstream_fetch(up, "GET", "/sentinel", NULL, NULL, 0, record_outcome,
                      &sentinel);
    run_until_callbacks(&h, 1);

    assert_int_equal(cancelled.calls, 0);
    assert_int_equal(sentinel.calls, 1);
    assert_int_equal(origin.requests, 1);
    assert_string_equal(origin.uri, "/sentinel");

    outcome_clear(&sentinel);
    jg_upstream_free(up);
    http_origin_stop(&origin);
    harness_free(&h);
}

static void
test_cancel_in_flight(void **state)
{
    struct harness h;
    struct raw_origin silent;
    struct http_origin origin;
    struct jg_upstream *up;
    struct outcome cancelled;
    struct outcome sentinel;
    struct jg_fetch *fetch;

    (void)state;
    harness_init(&h);
    raw_origin_start(&silent, &h, RAW_SILENT, NULL);
    http_origin_start(&origin, &h);
    up = upstream_for(&h, silent.url, 4);
    outcome_init(&cancelled, &h);

    fetch = jg_upstream_fetch(up, "GET", "/hang", NULL, NULL, 0,
                              record_outcome, &cancelled);
    run_until_requests(&h, &silent, 1);
    jg_upstream_cancel(fetch);
    assert_int_equal(jg_upstream_active(up), 0);
    jg_upstream_free(up);

    /* A second client proves the loop keeps running without a callback. */
    up = upstream_for(&h, origin.url, 4);
    outcome_init(&sentinel, &h);
    jg_upstream_fetch(up, "GET", "/sentinel", NULL, NULL, 0, record_outcome,
                      &sentinel);
    run_until_callbacks(&h, 1);

    assert_int_equal(cancelled.calls, 0);
    assert_int_equal(sentinel.calls, 1);

    outcome_clear(&sentinel);
    jg_upstream_free(up);
    http_origin_stop(&origin);
    raw_origin_stop(&silent);
    harness_free(&h);
}

static void
test_free_with_fetches_in_flight(void **state)
{
    struct harness h;
    struct raw_origin silent;
    struct jg_upstream *up;
    struct outcome outs[3];
    int i;

    (void)state;
    harness_init(&h);
    raw_origin_start(&silent, &h, RAW_SILENT, NULL);
    up = upstream_for(&h, silent.url, 4);

    for (i = 0; i < 3; i++) {
        outcome_init(&outs[i], &h);
        jg_upstream_fetch(up, "GET", "/hang", NULL, NULL, 0, record_outcome,
                          &outs[i]);
    }
    run_until_requests(&h, &silent, 3);
    jg_upstream_free(up);

    for (i = 0; i < 3; i++)
        assert_int_equal(outs[i].calls, 0);

    raw_origin_stop(&silent);
    harness_free(&h);
}

/* A chain: each callback starts the next fetch until `remaining` is 0. */
struct chain {
    struct harness *h;
    struct jg_upstream *up;
    int remaining;
    int completed;
    int ok;
};

static void
chain_next(const struct jg_upstream_response *r, void *arg)
{
    struct chain *c = arg;

    c->completed++;
    if (r->error == JG_FETCH_OK && r->status == 200)
        c->ok++;
    c->h->callbacks++;
    if (--c->remaining > 0)
        jg_upstream_fetch(c->up, "GET", "/chain", NULL, NULL, 0, chain_next,
                          c);
    if (c->h->callbacks >= c->h->expected)
        event_base_loopbreak(c->h->base);
}

static void
test_callback_starts_new_fetch(void **state)
{
    struct harness h;
    struct http_origin origin;
    struct chain c;

    (void)state;
    harness_init(&h);
    http_origin_start(&origin, &h);
    memset(&c, 0, sizeof(c));
    c.h = &h;
    c.up = upstream_for(&h, origin.url, 1);
    c.remaining = 3;

    jg_upstream_fetch(c.up, "GET", "/chain", NULL, NULL, 0, chain_next, &c);
    run_until_callbacks(&h, 3);

    assert_int_equal(c.completed, 3);
    assert_int_equal(c.ok, 3);
    assert_int_equal(origin.requests, 3);
    assert_int_equal(jg_upstream_active(c.up), 0);

    jg_upstream_free(c.up);
    http_origin_stop(&origin);
    harness_free(&h);
}

/* Two fetches; whichever reports first cancels the other. */
struct rivals {
    struct harness *h;
    struct jg_fetch *fetch[2];
    int calls[2];
};

static void
rival_done(struct rivals *r, int self)
{
    r->calls[self]++;
    r->h->callbacks++;
    jg_upstream_cancel(r->fetch[1 - self]);
    if (r->h->callbacks >= r->h->expected)
        event_base_loopbreak(r->h->base);
}

static void
rival_zero(const struct jg_upstream_response *resp, void *arg)
{
    (void)resp;
    rival_done(arg, 0);
}

static void
rival_one(const struct jg_upstream_response *resp, void *arg)
{
    (void)resp;
    rival_done(arg, 1);
}

static void
test_callback_cancels_finished_peer(void **state)
{
    struct harness h;
    struct jg_upstream *up;
    struct rivals r;
    struct outcome sentinel;

    (void)state;
    harness_init(&h);
    /* Both fail on the same loop turn, so the second has finished unreported. */
    up = upstream_for(&h, "ftp://127.0.0.1:1", 4);
    memset(&r, 0, sizeof(r));
    r.h = &h;
    r.fetch[0] = jg_upstream_fetch(up, "GET", "/a", NULL, NULL, 0,
                                   rival_zero, &r);
    r.fetch[1] = jg_upstream_fetch(up, "GET", "/b", NULL, NULL, 0,
                                   rival_one, &r);
    run_until_callbacks(&h, 1);
    assert_int_equal(jg_upstream_active(up), 0);

    /* A later fetch reports only once any stray callback would have run. */
    outcome_init(&sentinel, &h);
    jg_upstream_fetch(up, "GET", "/c", NULL, NULL, 0, record_outcome,
                      &sentinel);
    run_until_callbacks(&h, 2);

    assert_int_equal(r.calls[0] + r.calls[1], 1);
    assert_int_equal(sentinel.calls, 1);

    outcome_clear(&sentinel);
    jg_upstream_free(up);
    harness_free(&h);
}

static void
test_error_names(void **state)
{
    (void)state;
    assert_string_equal(jg_fetch_error_name(JG_FETCH_OK), "ok");
    assert_string_equal(jg_fetch_error_name(JG_FETCH_CONNECT), "connect");
    assert_string_equal(jg_fetch_error_name(JG_FETCH_TIMEOUT), "timeout");
    assert_string_equal(jg_fetch_error_name(JG_FETCH_TOO_LARGE), "too-large");
    assert_string_equal(jg_fetch_error_name(JG_FETCH_PROTOCOL), "protocol");
    assert_string_equal(jg_fetch_error_name(JG_FETCH_CANCELLED), "cancelled");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_returns_body_and_headers),
        cmocka_unit_test(test_hop_by_hop_headers_removed),
        cmocka_unit_test(test_interim_response_resets_headers),
        cmocka_unit_test(test_folded_header_joined),
        cmocka_unit_test(test_content_encoding_passes_through),
        cmocka_unit_test(test_error_statuses_are_ok),
        cmocka_unit_test(test_target_relayed_as_is),
        cmocka_unit_test(test_post_sends_headers_and_body),
        cmocka_unit_test(test_methods_reach_origin),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_silent_origin_times_out),
        cmocka_unit_test(test_truncated_body_is_protocol_error),
        cmocka_unit_test(test_garbage_reply_is_protocol_error),
        cmocka_unit_test(test_body_size_limit),
        cmocka_unit_test(test_bad_target_fails_from_loop),
        cmocka_unit_test(test_unsupported_scheme_fails_from_loop),
        cmocka_unit_test(test_concurrent_fetches_share_pool),
        cmocka_unit_test(test_sequential_fetches_reuse_connection),
        cmocka_unit_test(test_cancel_before_loop_runs),
        cmocka_unit_test(test_cancel_in_flight),
        cmocka_unit_test(test_free_with_fetches_in_flight),
        cmocka_unit_test(test_callback_starts_new_fetch),
        cmocka_unit_test(test_callback_cancels_finished_peer),
        cmocka_unit_test(test_error_names),
    };
    int failed;

    /* The origins write to sockets that the client may already have closed. */
    signal(SIGPIPE, SIG_IGN);
    /* Every origin is on loopback: no proxy from the environment applies. */
    setenv("no_proxy", "*", 1);
    if (getenv("JG_TEST_DEBUG") != NULL)
        jg_log_set_level(JG_LOG_DEBUG);
    else
        jg_log_set_level(JG_LOG_WARN);

    curl_global_init(CURL_GLOBAL_DEFAULT);
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return failed;
}
