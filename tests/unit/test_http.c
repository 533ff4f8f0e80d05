/*
 * Unit tests for the proxy port's HTTP/1.1 server. Each test hands one end
 * of a socketpair to the server with jg_http_adopt_fd() and plays the
 * client on the other end, turning the event loop between writes. The
 * handler writes what it was handed to a log, and either replies at once
 * with the target as the body or keeps the request for the test to
 * inspect and reply to. Deadlines are real libevent timers of 50 ms, run
 * until they fire, with a guard timer that fails the test instead of
 * waiting forever.
 */
#include <errno.h>
#include <event2/event.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "jobgate/jg_http.h"
#include "jobgate/jg_util.h"

#define DEADLINE_MS 50
/* How long a test waits for a deadline before it fails. */
#define GUARD_MS 2000
/* Loop turns a test allows for something that needs no timer. */
#define MAX_PUMPS 10000
/* SO_SNDBUF for the server's end where a test needs a known one (Linux
 * doubles it). */
#define SMALL_SNDBUF 32768
/* Larger than a Unix socket's default send buffer (about 208 KiB on
 * Linux), so part of the response waits in the server. */
#define LARGE_BODY_BYTES (1u << 20)

/* One server with one connection, and what its handler and client saw. */
struct harness {
    struct event_base *base;
    struct jg_http_server *srv;
    struct jg_http_limits limits;
    int client;

    bool defer;                      /* keep requests for the test */
    struct jg_http_request *pending; /* kept, no reply yet */
    const char *reply_body;          /* NULL: the target */
    size_t reply_len;

    size_t requests;                 /* handed to the handler */
    char log[16384];                 /* see log_request() */
    size_t log_len;
    char *last_body;                 /* copy of the last request's body */
    size_t last_body_len;

    char *in;                        /* what the client read, NUL-ended */
    size_t in_len;
    size_t in_cap;
    bool eof;
    bool guard_fired;
};

static const struct jg_http_limits test_limits = {
    .max_header_bytes = 4096,
    .max_headers = 20,
    .max_uri_bytes = 512,
    .max_body_bytes = 16384,
    .header_timeout_ms = 10000,
    .idle_timeout_ms = 10000,
    .max_connections = 4,
};

/* ---- the harness ---------------------------------------------------- */

static void log_printf(struct harness *h, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
log_printf(struct harness *h, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(h->log + h->log_len, sizeof(h->log) - h->log_len, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(h->log) - h->log_len);
    h->log_len += (size_t)n;
}

/* Log "METHOD target", one "name: value" line per field, "body N: text". */
static void
log_request(struct harness *h, struct jg_http_request *req)
{
    const struct jg_http_field *fields = jg_http_fields(req);
    size_t count = jg_http_field_count(req);
    size_t len;
    const char *body = jg_http_body(req, &len);
    size_t i;

    log_printf(h, "%s %s\n", jg_http_method_name(req), jg_http_target(req));
    for (i = 0; i < count; i++)
        log_printf(h, "%s: %s\n", fields[i].name, fields[i].value);
    log_printf(h, "body %zu: %.*s\n", len, (int)(len < 40 ? len : 40), body);

    jg_free(h->last_body);
    h->last_body = jg_malloc(len + 1);
    memcpy(h->last_body, body, len);
    h->last_body[len] = '\0';
    h->last_body_len = len;
}

static void
reply(struct harness *h, struct jg_http_request *req)
{
    if (h->reply_body != NULL)
        jg_http_reply(req, 200, h->reply_body, h->reply_len);
    else
        jg_http_reply(req, 200, jg_http_target(req),
                      strlen(jg_http_target(req)));
}

static void
on_request(struct jg_http_request *req, void *arg)
{
    struct harness *h = arg;

    h->requests++;
    log_request(h, req);
    if (h->defer) {
        assert_null(h->pending);
        h->pending = req;
        return;
    }
    reply(h, req);
}

/* Open a harness; sndbuf, unless 0, is the server end's SO_SNDBUF. */
static void
harness_open_sndbuf(struct harness *h, const struct jg_http_limits *limits,
                    int sndbuf)
{
    int fds[2];

    memset(h, 0, sizeof(*h));
    h->limits = *limits;
    h->base = event_base_new();
    assert_non_null(h->base);
    h->srv = jg_http_server_new(h->base, &h->limits, on_request, h);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
                                SOCK_CLOEXEC, 0, fds), 0);
    if (sndbuf > 0)
        assert_int_equal(setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &sndbuf,
                                    sizeof(sndbuf)), 0);
    assert_int_equal(jg_http_adopt_fd(h->srv, fds[0]), 0);
    h->client = fds[1];
    h->in_cap = 4096;
    h->in = jg_malloc(h->in_cap);
    h->in[0] = '\0';
}

static void
harness_open(struct harness *h, const struct jg_http_limits *limits)
{
    harness_open_sndbuf(h, limits, 0);
}

static void
harness_close(struct harness *h)
{
    jg_http_server_free(h->srv);
    event_base_free(h->base);
    close(h->client);
    jg_free(h->in);
    jg_free(h->last_body);
}

/* Run the callbacks that are ready now, a few rounds. */
static void
pump(struct harness *h)
{
    int i;

    for (i = 0; i < 4; i++)
        event_base_loop(h->base, EVLOOP_NONBLOCK);
}

/* Append what the server has sent so far to h->in. */
static void
read_available(struct harness *h)
{
    for (;;) {
        ssize_t n;

        if (h->in_cap - h->in_len < 65537) {
            h->in_cap = h->in_cap * 2 + 65537;
            h->in = jg_realloc(h->in, h->in_cap);
        }
        n = recv(h->client, h->in + h->in_len, h->in_cap - h->in_len - 1, 0);
        /* Linux gives ECONNRESET, after the queued bytes, when the server
         * closed with part of the request unread. */
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            h->eof = true;
            break;
        }
        if (n < 0) {
            assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
            break;
        }
        h->in_len += (size_t)n;
    }
    h->in[h->in_len] = '\0';
}

/* Send data[0..len) whole, turning the loop while the socket is full. */
static void
send_bytes(struct harness *h, const char *data, size_t len)
{
    size_t done = 0;
    size_t pumps = 0;

    while (done < len) {
        ssize_t n = send(h->client, data + done, len - done, MSG_NOSIGNAL);

        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        assert_true(++pumps < MAX_PUMPS);
        pump(h);
        read_available(h);
    }
}

static void
send_text(struct harness *h, const char *text)
{
    send_bytes(h, text, strlen(text));
}

/* Send text, let the server run, and read its responses. */
static void
exchange(struct harness *h, const char *text)
{
    send_text(h, text);
    pump(h);
    read_available(h);
}

static void
on_guard(evutil_socket_t fd, short what, void *arg)
{
    struct harness *h = arg;

    (void)fd;
    (void)what;
    h->guard_fired = true;
}

/*
 * Run the loop, blocking, until the server has closed the connection or
 * GUARD_MS have passed without it; the client reads nothing meanwhile.
 * Returns true when it was closed.
 */
static bool
run_until_closed(struct harness *h)
{
    struct timeval tv = {GUARD_MS / 1000, GUARD_MS % 1000 * 1000};
    struct event *guard = evtimer_new(h->base, on_guard, h);

    h->guard_fired = false;
    evtimer_add(guard, &tv);
    while (jg_http_connections(h->srv) > 0 && !h->guard_fired)
        event_base_loop(h->base, EVLOOP_ONCE);
    event_free(guard);
    return jg_http_connections(h->srv) == 0;
}

/* Reply to the kept request and let the server go on. */
static void
reply_pending(struct harness *h)
{
    struct jg_http_request *req = h->pending;

    assert_non_null(req);
    h->pending = NULL;
    reply(h, req);
    pump(h);
    read_available(h);
}

/* ---- reading responses ---------------------------------------------- */

struct response {
    int status;
    const char *head;    /* status line and fields, in the harness buffer */
    size_t head_len;
    const char *body;
    size_t body_len;
};

/*
 * Parse the response at *pos in h->in, for a request that was not HEAD;
 * returns false when none is complete there.
 */
static bool
next_response(const struct harness *h, size_t *pos, struct response *r)
{
    const char *start = h->in + *pos;
    const char *end = strstr(start, "\r\n\r\n");
    const char *cl;

    if (end == NULL)
        return false;
    assert_memory_equal(start, "HTTP/1.1 ", 9);
    r->status = (start[9] - '0') * 100 + (start[10] - '0') * 10 +
                (start[11] - '0');
    r->head = start;
    r->head_len = (size_t)(end - start) + 4;
    r->body = end + 4;
    r->body_len = 0;
    cl = strstr(start, "\r\nContent-Length: ");
    if (r->status != 100) {
        assert_non_null(cl);
        assert_true(cl < end);
        r->body_len = strtoul(cl + 18, NULL, 10);
    }
    if (*pos + r->head_len + r->body_len > h->in_len)
        return false;
    *pos += r->head_len + r->body_len;
    return true;
}

/* True when the response head has the header line "name: value". */
static bool
has_header(const struct response *r, const char *name, const char *value)
{
    char line[128];
    const char *p;

    snprintf(line, sizeof(line), "\r\n%s: %s\r\n", name, value);
    p = strstr(r->head, line);
    return p != NULL && p < r->head + r->head_len;
}

static void
expect_body(const struct response *r, const char *body)
{
    assert_int_equal(r->body_len, strlen(body));
    assert_memory_equal(r->body, body, r->body_len);
}

/* ---- well-formed requests ------------------------------------------- */

static void
test_get_simple(void **state)
{
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "GET /v2/org-jobs/abc?x=1 HTTP/1.1\r\n"
                 "Host: jobgate.local\r\n"
                 "Accept: \t application/json \t\r\n"
                 "Empty:\r\n"
                 "\r\n");

    assert_int_equal(h.requests, 1);
    assert_string_equal(h.log, "GET /v2/org-jobs/abc?x=1\n"
                               "Host: jobgate.local\n"
                               "Accept: application/json\n"
                               "Empty: \n"
                               "body 0: \n");
    assert_true(next_response(&h, &pos, &r));
    assert_int_equal(r.status, 200);
    assert_memory_equal(r.head, "HTTP/1.1 200 OK\r\nDate: ", 23);
    assert_true(has_header(&r, "Content-Length", "20"));
    assert_null(strstr(h.in, "Connection:"));
    expect_body(&r, "/v2/org-jobs/abc?x=1");
    assert_int_equal(pos, h.in_len);

    /* HTTP/1.1 stays open by default. */
    assert_int_equal(jg_http_connections(h.srv), 1);
    assert_false(h.eof);
    harness_close(&h);
}

static void
test_field_lookup(void **state)
{
    struct harness h;
    struct jg_http_request *req;
    size_t len;

    (void)state;
    harness_open(&h, &test_limits);
    h.defer = true;
    exchange(&h, "OPTIONS * HTTP/1.1\r\n"
                 "Host: a\r\n"
                 "X-Twice: first\r\n"
                 "x-twice: second\r\n"
                 "Connection: keep-alive, X-Hop\r\n"
                 "X-Hop: h\r\n"
                 "\r\n");

    req = h.pending;
    assert_non_null(req);
    assert_int_equal(jg_http_method(req), JG_HTTP_OPTIONS);
    assert_string_equal(jg_http_target(req), "*");
    assert_int_equal(jg_http_field_count(req), 5);
    assert_string_equal(jg_http_find(req, "x-TWICE"), "first");
    assert_null(jg_http_find(req, "X-Twic"));
    assert_true(jg_http_connection_lists(req, "x-hop"));
    assert_false(jg_http_connection_lists(req, "X-Twice"));
    assert_null(jg_http_find_end_to_end(req, "X-Hop"));
    assert_string_equal(jg_http_find(req, "X-Hop"), "h");
    assert_string_equal(jg_http_find_end_to_end(req, "X-Twice"), "first");
    assert_string_equal(jg_http_body(req, &len), "");
    assert_int_equal(len, 0);

    reply_pending(&h);
    assert_non_null(strstr(h.in, "HTTP/1.1 200 OK\r\n"));
    harness_close(&h);
}

static void
test_pipelined_replies_in_order(void **state)
{
    static const char *const targets[] = {"/a", "/b", "/c"};
    struct harness h;
    struct response r;
    size_t pos = 0;
    size_t i;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /c HTTP/1.1\r\nHost: x\r\n\r\n");

    assert_int_equal(h.requests, 3);
    for (i = 0; i < JG_ARRAY_LEN(targets); i++) {
        assert_true(next_response(&h, &pos, &r));
        assert_int_equal(r.status, 200);
        expect_body(&r, targets[i]);
    }
    assert_int_equal(pos, h.in_len);
    assert_int_equal(jg_http_connections(h.srv), 1);
    harness_close(&h);
}

static void
test_pipelined_one_at_a_time(void **state)
{
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    h.defer = true;
    exchange(&h, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                 "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
                 "GET /c HTTP/1.1\r\nHost: x\r\n\r\n");

    /* The next request waits in the buffer until the reply is queued. */
    assert_int_equal(h.requests, 1);
    assert_string_equal(jg_http_target(h.pending), "/a");
    assert_int_equal(h.in_len, 0);

    reply_pending(&h);
    assert_int_equal(h.requests, 2);
    assert_string_equal(jg_http_target(h.pending), "/b");
    assert_true(next_response(&h, &pos, &r));
    expect_body(&r, "/a");
    assert_false(next_response(&h, &pos, &r));

    reply_pending(&h);
    assert_int_equal(h.requests, 3);
    assert_string_equal(jg_http_target(h.pending), "/c");
    reply_pending(&h);
    assert_true(next_response(&h, &pos, &r));
    expect_body(&r, "/b");
    assert_true(next_response(&h, &pos, &r));
    expect_body(&r, "/c");

    assert_string_equal(h.log, "GET /a\nHost: x\nbody 0: \n"
                               "POST /b\nHost: x\nContent-Length: 3\n"
                               "body 3: xyz\n"
                               "GET /c\nHost: x\nbody 0: \n");
    harness_close(&h);
}

static const char split_head[] =
    "GET /split/target HTTP/1.1\r\n"
    "Host: a.example\r\n"
    "X-Long: 0123456789abcdef\r\n"
    "\r\n";

static const char split_log[] =
    "GET /split/target\n"
    "Host: a.example\n"
    "X-Long: 0123456789abcdef\n"
    "body 0: \n";

static void
test_head_one_byte_at_a_time(void **state)
{
    size_t len = strlen(split_head);
    struct harness h;
    size_t i;

    (void)state;
    harness_open(&h, &test_limits);
    for (i = 0; i < len; i++) {
        send_bytes(&h, split_head + i, 1);
        pump(&h);
        read_available(&h);
        if (i + 1 < len) {
            assert_int_equal(h.requests, 0);
            assert_int_equal(h.in_len, 0);
        }
    }
    assert_int_equal(h.requests, 1);
    assert_string_equal(h.log, split_log);
    assert_non_null(strstr(h.in, "\r\n\r\n/split/target"));
    harness_close(&h);
}

static void
test_head_split_at_each_byte(void **state)
{
    size_t len = strlen(split_head);
    size_t split;

    (void)state;
    for (split = 1; split < len; split++) {
        struct harness h;

        harness_open(&h, &test_limits);
        send_bytes(&h, split_head, split);
        pump(&h);
        assert_int_equal(h.requests, 0);
        send_bytes(&h, split_head + split, len - split);
        pump(&h);
        read_available(&h);
        if (h.requests != 1)
            print_error("split after byte %zu\n", split);
        assert_int_equal(h.requests, 1);
        assert_string_equal(h.log, split_log);
        harness_close(&h);
    }
}

/* A head with a long target and many fields, for the growth tests. */
static void
build_long_head(char *buf, size_t cap, const char *framing)
{
    char target[301];
    int n;

    memset(target, 't', sizeof(target) - 1);
    target[0] = '/';
    target[sizeof(target) - 1] = '\0';
    n = snprintf(buf, cap,
                 "POST %s HTTP/1.1\r\n"
                 "Host: grow.example\r\n"
                 "X-One: value one\r\n"
                 "X-Two: value two\r\n"
                 "X-Three: value three\r\n"
                 "%s\r\n"
                 "\r\n",
                 target, framing);
    assert_true(n > 0 && (size_t)n < cap);
}

static void
expect_long_head_logged(const struct harness *h, const char *framing,
                        size_t body_len)
{
    char expected[1024];
    char target[301];
    int n;

    memset(target, 't', sizeof(target) - 1);
    target[0] = '/';
    target[sizeof(target) - 1] = '\0';
    n = snprintf(expected, sizeof(expected),
                 "POST %s\n"
                 "Host: grow.example\n"
                 "X-One: value one\n"
                 "X-Two: value two\n"
                 "X-Three: value three\n"
                 "%s\n"
                 "body %zu: ",
                 target, framing, body_len);
    assert_true(n > 0 && (size_t)n < sizeof(expected));
    assert_int_equal(strncmp(h->log, expected, (size_t)n), 0);
}

/*
 * The head is parsed before the body comes, then the body makes the
 * 1024-byte input buffer grow three times: the target and fields the
 * handler gets must have moved with it.
 */
static void
test_body_grows_buffer_after_head(void **state)
{
    enum { BODY = 6000, PIECE = 500 };
    struct harness h;
    char head[1024];
    char *body = jg_malloc(BODY);
    size_t i;

    (void)state;
    for (i = 0; i < BODY; i++)
        body[i] = (char)('a' + i % 26);
    build_long_head(head, sizeof(head), "Content-Length: 6000");

    harness_open(&h, &test_limits);
    exchange(&h, head);
    assert_int_equal(h.requests, 0);
    for (i = 0; i < BODY; i += PIECE) {
        send_bytes(&h, body + i, PIECE);
        pump(&h);
    }
    read_available(&h);

    assert_int_equal(h.requests, 1);
    expect_long_head_logged(&h, "Content-Length: 6000", BODY);
    assert_int_equal(h.last_body_len, BODY);
    assert_memory_equal(h.last_body, body, BODY);
    assert_non_null(strstr(h.in, "HTTP/1.1 200 OK\r\n"));
    jg_free(body);
    harness_close(&h);
}

static void
test_chunked_body_grows_buffer(void **state)
{
    enum { CHUNKS = 6, CHUNK = 1000 };
    struct harness h;
    char head[1024];
    char chunk[CHUNK + 16];
    char *expected = jg_malloc(CHUNKS * CHUNK);
    size_t i;

    (void)state;
    build_long_head(head, sizeof(head), "Transfer-Encoding: chunked");
    harness_open(&h, &test_limits);
    exchange(&h, head);
    for (i = 0; i < CHUNKS; i++) {
        int n = snprintf(chunk, sizeof(chunk), "3e8\r\n");

        memset(chunk + n, (int)('A' + i), CHUNK);
        memcpy(chunk + n + CHUNK, "\r\n", 2);
        memset(expected + i * CHUNK, (int)('A' + i), CHUNK);
        send_bytes(&h, chunk, (size_t)n + CHUNK + 2);
        pump(&h);
        assert_int_equal(h.requests, 0);
    }
    exchange(&h, "0\r\n\r\n");

    assert_int_equal(h.requests, 1);
    expect_long_head_logged(&h, "Transfer-Encoding: chunked", CHUNKS * CHUNK);
    assert_int_equal(h.last_body_len, CHUNKS * CHUNK);
    assert_memory_equal(h.last_body, expected, CHUNKS * CHUNK);
    jg_free(expected);
    harness_close(&h);
}

static void
test_chunked_extensions_trailers(void **state)
{
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "POST /c HTTP/1.1\r\n"
                 "Host: a\r\n"
                 "Transfer-Encoding: chunked\r\n"
                 "\r\n"
                 "5;name=value\r\nhello\r\n"
                 "06;a;b=\"q\"\r\n world\r\n"
                 "0;last\r\n"
                 "X-Trailer: t\r\n"
                 "Checksum: 1\r\n"
                 "\r\n"
                 "GET /next HTTP/1.1\r\nHost: a\r\n\r\n");

    assert_int_equal(h.requests, 2);
    assert_string_equal(h.log, "POST /c\n"
                               "Host: a\n"
                               "Transfer-Encoding: chunked\n"
                               "body 11: hello world\n"
                               "GET /next\nHost: a\nbody 0: \n");
    assert_true(next_response(&h, &pos, &r));
    expect_body(&r, "/c");
    assert_true(next_response(&h, &pos, &r));
    expect_body(&r, "/next");
    harness_close(&h);
}

/* A HEAD response has neither a body nor a Content-Length. */
static void
test_head_response_no_body(void **state)
{
    struct harness h;
    struct response r;
    const char *head_end;
    size_t pos;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n"
                 "GET /g HTTP/1.1\r\nHost: a\r\n\r\n");

    assert_int_equal(h.requests, 2);
    assert_memory_equal(h.in, "HTTP/1.1 200 OK\r\n", 17);
    head_end = strstr(h.in, "\r\n\r\n");
    assert_non_null(head_end);
    pos = (size_t)(head_end - h.in) + 4;
    assert_null(memmem(h.in, pos, "Content-Length", 14));
    assert_true(next_response(&h, &pos, &r));
    assert_int_equal(r.status, 200);
    expect_body(&r, "/g");
    assert_int_equal(pos, h.in_len);
    harness_close(&h);
}

/* ---- rejected requests ---------------------------------------------- */

struct bad_request {
    const char *name;
    const char *text;
    int status;
};

/* Send text[0..len) and expect the parser's error status and a close. */
static void
expect_rejected(const char *name, const char *text, size_t len, int status)
{
    struct harness h;
    struct response r;
    size_t pos = 0;
    char status_line[16];

    print_message("case: %s\n", name);
    harness_open(&h, &test_limits);
    send_bytes(&h, text, len);
    pump(&h);
    read_available(&h);

    assert_int_equal(h.requests, 0);
    assert_true(next_response(&h, &pos, &r));
    snprintf(status_line, sizeof(status_line), "HTTP/1.1 %d ", status);
    assert_memory_equal(r.head, status_line, strlen(status_line));
    assert_true(has_header(&r, "Connection", "close"));
    assert_memory_equal(r.body, "{\"detail\":\"", 11);
    assert_int_equal(pos, h.in_len);
    assert_int_equal(jg_http_connections(h.srv), 0);
    assert_true(h.eof);
    assert_int_equal(jg_http_stats(h.srv)->bad_requests, 1);
    harness_close(&h);
}

static void
test_nul_in_value_rejected(void **state)
{
    static const char text[] = "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n";

    (void)state;
    expect_rejected("NUL in a value", text, sizeof(text) - 1, 400);
}

static void
test_invalid_requests_rejected(void **state)
{
    char many_fields[1024];
    char long_uri[700];
    char big_head[4300];
    size_t i;
    int n;

    (void)state;
    n = snprintf(many_fields, sizeof(many_fields), "GET / HTTP/1.1\r\n"
                                                   "Host: a\r\n");
    for (i = 0; i < 20; i++)
        n += snprintf(many_fields + n, sizeof(many_fields) - (size_t)n,
                      "X-F%zu: v\r\n", i);
    snprintf(many_fields + n, sizeof(many_fields) - (size_t)n, "\r\n");
    n = snprintf(long_uri, sizeof(long_uri), "GET /");
    memset(long_uri + n, 'u', 512);
    snprintf(long_uri + n + 512, sizeof(long_uri) - (size_t)n - 512,
             " HTTP/1.1\r\nHost: a\r\n\r\n");
    n = snprintf(big_head, sizeof(big_head), "GET / HTTP/1.1\r\nX-Big: ");
    memset(big_head + n, 'b', 4100);
    big_head[n + 4100] = '\0';

    {
        const struct bad_request cases[] = {
            {"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
             400},
            {"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
             400},
            {"bare LF after request line",
             "GET / HTTP/1.1\nHost: a\r\n\r\n", 400},
            {"bare LF after field", "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
             400},
            {"bare CR", "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400},
            {"two Content-Length",
             "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
             "Content-Length: 1\r\n\r\nx", 400},
            {"Content-Length list",
             "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
             400},
            {"Content-Length sign",
             "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx", 400},
            {"CL and TE",
             "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
             "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
            {"TE gzip",
             "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
             400},
            {"TE gzip, chunked",
             "POST / HTTP/1.1\r\nHost: a\r\n"
             "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400},
            {"TE on HTTP/1.0",
             "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
             "0\r\n\r\n", 400},
            {"chunk size +5",
             "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             "\r\n+5\r\nhello\r\n0\r\n\r\n", 400},
            {"chunk size with leading space",
             "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             "\r\n 5\r\nhello\r\n0\r\n\r\n", 400},
            {"chunk size 0x5",
             "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             "\r\n0x5\r\nhello\r\n0\r\n\r\n", 400},
            {"chunk size overflow",
             "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             "\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", 400},
            {"chunk without CRLF after data",
             "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             "\r\n5\r\nhelloXY0\r\n\r\n", 400},
            {"HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505},
            {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
            {"no version", "GET /\r\nHost: a\r\n\r\n", 400},
            {"missing Host on 1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
             400},
            {"two Host fields", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
             400},
            {"too many header fields", many_fields, 431},
            {"header section too large", big_head, 431},
            {"long URI", long_uri, 414},
            {"big Content-Length",
             "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 16385\r\n\r\n",
             413},
            {"Content-Length overflow",
             "POST / HTTP/1.1\r\nHost: a\r\n"
             "Content-Length: 99999999999999999999999\r\n\r\n", 413},
            {"big chunk",
             "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             "\r\n4001\r\n", 413},
            {"unsupported Expect",
             "POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n"
             "Content-Length: 1\r\n\r\nx", 417},
        };

        for (i = 0; i < JG_ARRAY_LEN(cases); i++)
            expect_rejected(cases[i].name, cases[i].text,
                            strlen(cases[i].text), cases[i].status);
    }
}

/*
 * Chunk extensions and trailer fields are skipped, but bytes that another
 * parser could read differently (a CTL such as NUL, a bare LF, a line that
 * is no field) are rejected as they are in the head.
 */
static void
test_chunk_extras_rejected(void **state)
{
#define CHUNKED_HEAD "POST / HTTP/1.1\r\nHost: a\r\n" \
                     "Transfer-Encoding: chunked\r\n\r\n"
    static const char ext_nul[] = CHUNKED_HEAD "5;a\0b\r\nhello\r\n0\r\n\r\n";
    static const char ext_ctl[] = CHUNKED_HEAD "5;a\001\r\nhello\r\n0\r\n\r\n";
    static const char trailer_lf[] = CHUNKED_HEAD "0\r\nX: a\nY: b\r\n\r\n";
    static const char trailer_junk[] = CHUNKED_HEAD "0\r\njunk\r\n\r\n";
    static const char trailer_nul[] = CHUNKED_HEAD "0\r\nX: a\0b\r\n\r\n";
#undef CHUNKED_HEAD

    (void)state;
    expect_rejected("NUL in a chunk extension", ext_nul, sizeof(ext_nul) - 1,
                    400);
    expect_rejected("CTL in a chunk extension", ext_ctl, sizeof(ext_ctl) - 1,
                    400);
    expect_rejected("bare LF in a trailer", trailer_lf,
                    sizeof(trailer_lf) - 1, 400);
    expect_rejected("trailer line without a colon", trailer_junk,
                    sizeof(trailer_junk) - 1, 400);
    expect_rejected("NUL in a trailer", trailer_nul, sizeof(trailer_nul) - 1,
                    400);
}

static void
test_error_after_good_request(void **state)
{
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
                 "GET /bad HTTP/1.1\r\nHost : a\r\n\r\n"
                 "GET /never HTTP/1.1\r\nHost: a\r\n\r\n");

    assert_int_equal(h.requests, 1);
    assert_true(next_response(&h, &pos, &r));
    assert_int_equal(r.status, 200);
    expect_body(&r, "/ok");
    assert_true(next_response(&h, &pos, &r));
    assert_int_equal(r.status, 400);
    assert_int_equal(pos, h.in_len);
    assert_true(h.eof);
    harness_close(&h);
}

/* ---- Expect, keep-alive and close ----------------------------------- */

static void
test_expect_continue(void **state)
{
    static const char interim[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "POST /e HTTP/1.1\r\n"
                 "Host: a\r\n"
                 "Expect: 100-Continue\r\n"
                 "Content-Length: 5\r\n"
                 "\r\n");
    assert_int_equal(h.requests, 0);
    assert_string_equal(h.in, interim);

    exchange(&h, "hello");
    assert_int_equal(h.requests, 1);
    assert_true(next_response(&h, &pos, &r));
    assert_int_equal(r.status, 100);
    assert_true(next_response(&h, &pos, &r));
    assert_int_equal(r.status, 200);
    assert_int_equal(pos, h.in_len);
    assert_string_equal(h.last_body, "hello");
    harness_close(&h);
}

/* The body already came with the head, so no interim response is due. */
static void
test_expect_continue_body_present(void **state)
{
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                 "Content-Length: 5\r\n\r\nhello");
    assert_int_equal(h.requests, 1);
    assert_true(next_response(&h, &pos, &r));
    assert_int_equal(r.status, 200);
    assert_int_equal(pos, h.in_len);
    harness_close(&h);
}

/*
 * RFC 9110, section 10.1.1: a server that receives a 100-continue
 * expectation in an HTTP/1.0 request must ignore it.
 */
static void
test_expect_continue_http10(void **state)
{
    struct harness h;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "POST /e HTTP/1.0\r\nExpect: 100-continue\r\n"
                 "Content-Length: 5\r\n\r\n");
    assert_int_equal(h.requests, 0);
    assert_int_equal(h.in_len, 0);
    harness_close(&h);
}

static void
test_http10_keep_alive(void **state)
{
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert_true(next_response(&h, &pos, &r));
    assert_true(has_header(&r, "Connection", "keep-alive"));
    expect_body(&r, "/a");
    assert_int_equal(jg_http_connections(h.srv), 1);

    /* Without keep-alive an HTTP/1.0 connection closes after the response. */
    exchange(&h, "GET /b HTTP/1.0\r\n\r\n");
    assert_true(next_response(&h, &pos, &r));
    assert_true(has_header(&r, "Connection", "close"));
    expect_body(&r, "/b");
    assert_int_equal(jg_http_connections(h.srv), 0);
    assert_true(h.eof);
    assert_int_equal(h.requests, 2);
    harness_close(&h);
}

static void
test_connection_close_honoured(void **state)
{
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    exchange(&h, "GET /a HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n"
                 "GET /b HTTP/1.1\r\nHost: a\r\n\r\n");

    assert_int_equal(h.requests, 1);
    assert_true(next_response(&h, &pos, &r));
    assert_true(has_header(&r, "Connection", "close"));
    expect_body(&r, "/a");
    assert_int_equal(pos, h.in_len);
    assert_int_equal(jg_http_connections(h.srv), 0);
    assert_true(h.eof);
    harness_close(&h);
}

static void
test_set_close_from_handler(void **state)
{
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    h.defer = true;
    exchange(&h, "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                 "GET /b HTTP/1.1\r\nHost: a\r\n\r\n");
    jg_http_set_close(h.pending);
    reply_pending(&h);

    assert_int_equal(h.requests, 1);
    assert_true(next_response(&h, &pos, &r));
    assert_true(has_header(&r, "Connection", "close"));
    assert_int_equal(jg_http_connections(h.srv), 0);
    assert_true(h.eof);
    harness_close(&h);
}

/*
 * A client may shut down its sending side right after its last request
 * and still read the whole response. With a 64 KiB send buffer, 100000
 * bytes leave a little of the response queued in the server and 1 MiB
 * leaves much of it.
 */
static void
test_half_close_gets_whole_response(void **state)
{
    static const size_t sizes[] = {100000, LARGE_BODY_BYTES};
    char *big = jg_malloc(LARGE_BODY_BYTES);
    size_t i;

    (void)state;
    memset(big, 'L', LARGE_BODY_BYTES);
    for (i = 0; i < JG_ARRAY_LEN(sizes); i++) {
        struct harness h;
        struct response r;
        size_t pos = 0;
        size_t pumps;

        print_message("response body of %zu bytes\n", sizes[i]);
        harness_open_sndbuf(&h, &test_limits, SMALL_SNDBUF);
        h.reply_body = big;
        h.reply_len = sizes[i];
        send_text(&h, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_int_equal(shutdown(h.client, SHUT_WR), 0);
        for (pumps = 0; pumps < MAX_PUMPS && !h.eof; pumps++) {
            pump(&h);
            read_available(&h);
        }

        assert_true(h.eof);
        assert_int_equal(h.requests, 1);
        assert_true(next_response(&h, &pos, &r));
        assert_int_equal(r.body_len, sizes[i]);
        assert_memory_equal(r.body, big, sizes[i]);
        harness_close(&h);
    }
    jg_free(big);
}

/* ---- deadlines and connections -------------------------------------- */

static void
test_header_deadline_closes(void **state)
{
    struct jg_http_limits limits = test_limits;
    struct harness h;
    uint64_t start;

    (void)state;
    limits.header_timeout_ms = DEADLINE_MS;
    start = jg_now_ms();
    harness_open(&h, &limits);
    exchange(&h, "GET /slow HT");

    assert_true(run_until_closed(&h));
    /* Milliseconds are truncated at both ends, hence one less. */
    assert_true(jg_now_ms() - start >= DEADLINE_MS - 1);
    assert_int_equal(jg_http_stats(h.srv)->request_timeouts, 1);
    assert_int_equal(h.requests, 0);
    read_available(&h);
    assert_int_equal(h.in_len, 0);
    assert_true(h.eof);
    harness_close(&h);
}

/*
 * The header deadline runs from accept and does not restart per byte: a
 * byte every 5 ms would take 150 ms for this head, and the connection is
 * closed at 50 ms, before the last byte.
 */
static void
test_header_deadline_is_total(void **state)
{
    struct jg_http_limits limits = test_limits;
    struct harness h;
    const char *head = "GET /drip HTTP/1.1\r\nHost: a\r\n";
    size_t i;

    (void)state;
    limits.header_timeout_ms = DEADLINE_MS;
    harness_open(&h, &limits);
    for (i = 0; head[i] != '\0' && jg_http_connections(h.srv) > 0; i++) {
        struct timeval tv = {0, 5000};

        send_bytes(&h, head + i, 1);
        event_base_loopexit(h.base, &tv);
        event_base_dispatch(h.base);
    }
    assert_int_equal(jg_http_connections(h.srv), 0);
    assert_true(head[i] != '\0');
    assert_int_equal(jg_http_stats(h.srv)->request_timeouts, 1);
    assert_int_equal(h.requests, 0);
    harness_close(&h);
}

static void
test_idle_deadline_after_reply(void **state)
{
    struct jg_http_limits limits = test_limits;
    struct harness h;
    struct response r;
    size_t pos = 0;

    (void)state;
    limits.idle_timeout_ms = DEADLINE_MS;
    harness_open(&h, &limits);
    exchange(&h, "GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(next_response(&h, &pos, &r));
    assert_int_equal(jg_http_connections(h.srv), 1);

    assert_true(run_until_closed(&h));
    assert_int_equal(jg_http_stats(h.srv)->request_timeouts, 1);
    read_available(&h);
    assert_true(h.eof);
    harness_close(&h);
}

/*
 * A response with Connection: close to a client that never reads must not
 * keep the connection open past the idle deadline.
 */
static void
test_closing_connection_has_deadline(void **state)
{
    struct jg_http_limits limits = test_limits;
    struct harness h;
    char *big = jg_malloc(LARGE_BODY_BYTES);

    (void)state;
    memset(big, 'L', LARGE_BODY_BYTES);
    limits.idle_timeout_ms = DEADLINE_MS;
    harness_open(&h, &limits);
    h.reply_body = big;
    h.reply_len = LARGE_BODY_BYTES;
    send_text(&h, "GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");

    assert_true(run_until_closed(&h));
    assert_int_equal(h.requests, 1);
    jg_free(big);
    harness_close(&h);
}

static void
test_deadline_waits_for_handler(void **state)
{
    struct jg_http_limits limits = test_limits;
    struct harness h;
    struct timeval tv = {0, 3 * DEADLINE_MS * 1000};

    (void)state;
    limits.header_timeout_ms = DEADLINE_MS;
    limits.idle_timeout_ms = DEADLINE_MS;
    harness_open(&h, &limits);
    h.defer = true;
    exchange(&h, "GET /a HTTP/1.1\r\nHost: a\r\n\r\n");

    /* Three deadlines pass while the handler keeps the request. */
    event_base_loopexit(h.base, &tv);
    event_base_dispatch(h.base);
    assert_int_equal(jg_http_connections(h.srv), 1);
    assert_int_equal(jg_http_stats(h.srv)->request_timeouts, 0);

    reply_pending(&h);
    assert_non_null(strstr(h.in, "HTTP/1.1 200 OK\r\n"));
    assert_true(run_until_closed(&h));
    harness_close(&h);
}

static void
test_max_connections_on_adopt(void **state)
{
    struct jg_http_limits limits = test_limits;
    struct harness h;
    int fds[2];

    (void)state;
    limits.max_connections = 1;
    harness_open(&h, &limits);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds),
                     0);

    /* Refused: the descriptor stays the caller's. */
    assert_int_equal(jg_http_adopt_fd(h.srv, fds[0]), -1);
    assert_int_equal(jg_http_stats(h.srv)->connections_rejected, 1);
    assert_int_equal(jg_http_stats(h.srv)->connections_accepted, 1);
    assert_int_equal(close(fds[0]), 0);
    assert_int_equal(close(fds[1]), 0);
    harness_close(&h);
}

static void
test_close_idle(void **state)
{
    struct harness h;
    struct harness other;
    struct response r;
    size_t pos = 0;

    (void)state;
    harness_open(&h, &test_limits);
    h.defer = true;
    exchange(&h, "GET /busy HTTP/1.1\r\nHost: a\r\n\r\n");
    harness_open(&other, &test_limits);
    exchange(&other, "GET /idle HTTP/1.1\r\nHost: a\r\n\r\n");

    /* The idle connection closes now, the busy one after its response. */
    assert_int_equal(jg_http_close_idle(other.srv), 0);
    read_available(&other);
    assert_true(other.eof);
    assert_int_equal(jg_http_close_idle(h.srv), 1);
    reply_pending(&h);
    assert_true(next_response(&h, &pos, &r));
    assert_true(has_header(&r, "Connection", "close"));
    assert_int_equal(jg_http_connections(h.srv), 0);
    assert_true(h.eof);
    harness_close(&other);
    harness_close(&h);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_simple),
        cmocka_unit_test(test_field_lookup),
        cmocka_unit_test(test_pipelined_replies_in_order),
        cmocka_unit_test(test_pipelined_one_at_a_time),
        cmocka_unit_test(test_head_one_byte_at_a_time),
        cmocka_unit_test(test_head_split_at_each_byte),
        cmocka_unit_test(test_body_grows_buffer_after_head),
        cmocka_unit_test(test_chunked_body_grows_buffer),
        cmocka_unit_test(test_chunked_extensions_trailers),
        cmocka_unit_test(test_head_response_no_body),
        cmocka_unit_test(test_invalid_requests_rejected),
        cmocka_unit_test(test_nul_in_value_rejected),
        cmocka_unit_test(test_chunk_extras_rejected),
        cmocka_unit_test(test_error_after_good_request),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_expect_continue_body_present),
        cmocka_unit_test(test_expect_continue_http10),
        cmocka_unit_test(test_http10_keep_alive),
        cmocka_unit_test(test_connection_close_honoured),
        cmocka_unit_test(test_set_close_from_handler),
        cmocka_unit_test(test_half_close_gets_whole_response),
        cmocka_unit_test(test_header_deadline_closes),
        cmocka_unit_test(test_header_deadline_is_total),
        cmocka_unit_test(test_idle_deadline_after_reply),
        cmocka_unit_test(test_closing_connection_has_deadline),
        cmocka_unit_test(test_deadline_waits_for_handler),
        cmocka_unit_test(test_max_connections_on_adopt),
        cmocka_unit_test(test_close_idle),
    };

    /* As the server does: a write to a closed peer must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
