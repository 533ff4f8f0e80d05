/*
 * Fuzz target for the proxy port's HTTP/1.1 server, src/jg_http.c. The
 * input, after a control block of CONTROL_BYTES, is what one client sends
 * on one connection. The server is handed one end of a socketpair with
 * jg_http_adopt_fd(), and the stream is written to the other end in writes
 * whose sizes the control block picks, with event loop turns in between.
 * So heads and bodies arrive split at any byte, and the input buffer grows
 * while a request is half parsed.
 *
 * Beyond not crashing, leaking or tripping a sanitizer:
 * - each request handed to the handler is within the limits: the method
 *   is a token, the target is visible ASCII of at most max_uri_bytes, and
 *   there are at most max_headers fields. Field names are tokens, values
 *   contain no CR, LF or NUL and no blank at either end, and jg_http_find()
 *   returns the first field of each name. There is at most one
 *   Content-Length, never together with Transfer-Encoding, and the body
 *   has at most max_body_bytes and the length Content-Length gives;
 * - a request replied to later from a timer is byte for byte unchanged by
 *   then, so the server did not read into its buffer or move it meanwhile;
 * - the client reads well-formed responses: interim 100s, one response
 *   per handled request in order with the status and body the handler gave
 *   and its Content-Length (none for HEAD), then at most one error response
 *   with Connection: close, and nothing after any Connection: close;
 * - once the client has shut down its sending side, the server delivers
 *   every response the handler gave and closes the connection within a
 *   bounded number of loop turns.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "jobgate/jg_http.h"
#include "jobgate/jg_util.h"

/*
 * The control block at the start of each input:
 *   [0]  bit i % 8 set: the reply to request i comes from a 0 ms timer,
 *        not from inside the handler
 *   [1]  nibble i % 2: how request i gets its reply (see reply_request())
 *   [2], [3]  the sizes of the writes, taken in turn (see write_size())
 *   [4]  bits 0-1: loop turns after each write, minus one;
 *        bits 2-3: how the run ends (see finish_run())
 */
#define CONTROL_BYTES 5

/*
 * SO_SNDBUF of the server's end of the socketpair (Linux doubles it). It
 * is fixed so that runs behave the same whatever the system default, and
 * small so that part of a large response waits in the server for
 * writability.
 */
#define SERVER_SNDBUF 32768
#define SMALL_BODY_BYTES 24
#define LARGE_BODY_BYTES 70000
/* Responses kept for checking; past this they are read and dropped. */
#define MAX_RESPONSE_BYTES (8u << 20)
/* Rounds of writing, and of waiting for the close, before giving up. */
#define MAX_ROUNDS 100000

enum reply_kind {
    REPLY_SMALL = 0,   /* 200 with SMALL_BODY_BYTES */
    REPLY_LARGE,       /* 200 with LARGE_BODY_BYTES */
    REPLY_BUFFER,      /* 404 with SMALL_BODY_BYTES via an evbuffer */
    REPLY_EMPTY,       /* 204 */
};

#define REPLY_KIND_MASK 3
#define REPLY_CLOSE 4         /* jg_http_set_close() */
#define REPLY_EXTRA_HEADER 8  /* a second added header */

static const struct jg_http_limits limits = {
    .max_header_bytes = 4096,
    .max_headers = 20,
    .max_uri_bytes = 512,
    .max_body_bytes = 8192,
    .header_timeout_ms = 600000,
    .idle_timeout_ms = 600000,
    .max_connections = 4,
};

/* What the client must read for one handled request. */
struct expected_reply {
    int status;
    size_t body_len;  /* the length given to jg_http_reply() */
    bool head;        /* a HEAD request: no body and no Content-Length */
    bool has_body;    /* false for HEAD and 204 */
    bool close;       /* the handler asked for Connection: close */
};

/* One input's server and connection, and what the client has seen. */
struct run {
    const uint8_t *control;
    struct event_base *base;
    struct jg_http_server *srv;
    int client;
    struct event *timer;               /* replies to pending */
    struct jg_http_request *pending;   /* handed out, no reply yet */
    uint64_t pending_hash;             /* check_request() when handed out */
    bool idle_closed;                  /* jg_http_close_idle() was called */
    struct expected_reply *replies;    /* one per handled request */
    size_t reply_count;
    size_t reply_cap;
    char *body;                        /* LARGE_BODY_BYTES, reply bodies */
    char *responses;                   /* what the client read */
    size_t response_len;
    size_t response_cap;
    bool responses_dropped;            /* past MAX_RESPONSE_BYTES */
    bool eof;                          /* the server closed its end */
};

/* ---- checks on a handed-out request --------------------------------- */

static bool
is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* FNV-1a over len, then the bytes: a fingerprint of everything handed out. */
static uint64_t
hash_bytes(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    size_t i;

    for (i = 0; i < sizeof(len); i++)
        h = (h ^ ((len >> (8 * i)) & 0xff)) * 0x100000001b3ULL;
    for (i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static void
check_token(const char *s, size_t len)
{
    size_t i;

    FUZZ_CHECK(len > 0);
    for (i = 0; i < len; i++)
        FUZZ_CHECK(is_tchar((unsigned char)s[i]));
}

static uint64_t
check_request_line(const struct jg_http_request *req, uint64_t h)
{
    /* In the order of enum jg_http_method. */
    static const char *const names[] = {
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
    };
    const char *method = jg_http_method_name(req);
    const char *target = jg_http_target(req);
    enum jg_http_method m = jg_http_method(req);
    size_t len = strlen(method);
    size_t i;

    FUZZ_CHECK(len <= 16);
    check_token(method, len);
    FUZZ_CHECK(m <= JG_HTTP_OTHER);
    for (i = 0; i < JG_ARRAY_LEN(names); i++)
        FUZZ_CHECK((strcmp(method, names[i]) == 0) ==
                   (m == (enum jg_http_method)i));
    h = hash_bytes(h, method, len);

    len = strlen(target);
    FUZZ_CHECK(len >= 1 && len <= limits.max_uri_bytes);
    for (i = 0; i < len; i++)
        FUZZ_CHECK((unsigned char)target[i] > 0x20 &&
                   (unsigned char)target[i] < 0x7f);
    return hash_bytes(h, target, len);
}

/* The value of the first field before index end named like fields[end]. */
static const char *
first_value(const struct jg_http_field *fields, size_t end)
{
    size_t i;

    for (i = 0; i < end; i++) {
        if (strcasecmp(fields[i].name, fields[end].name) == 0)
            return fields[i].value;
    }
    return fields[end].value;
}

static void
check_value(const char *value)
{
    size_t len = strlen(value);
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)value[i];

        FUZZ_CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
    }
    if (len > 0) {
        FUZZ_CHECK(value[0] != ' ' && value[0] != '\t');
        FUZZ_CHECK(value[len - 1] != ' ' && value[len - 1] != '\t');
    }
}

/* Check the fields; *cl and *te get the framing fields, or NULL. */
static uint64_t
check_fields(const struct jg_http_request *req, uint64_t h, const char **cl,
             const char **te)
{
    const struct jg_http_field *fields = jg_http_fields(req);
    size_t count = jg_http_field_count(req);
    size_t cls = 0;
    size_t tes = 0;
    size_t hosts = 0;
    size_t i;

    *cl = NULL;
    *te = NULL;
    FUZZ_CHECK(count <= limits.max_headers);
    for (i = 0; i < count; i++) {
        const struct jg_http_field *f = &fields[i];
        const char *first = first_value(fields, i);
        const char *end_to_end;

        FUZZ_CHECK(strlen(f->name) == f->name_len);
        check_token(f->name, f->name_len);
        check_value(f->value);
        FUZZ_CHECK(jg_http_find(req, f->name) == first);
        end_to_end = jg_http_find_end_to_end(req, f->name);
        FUZZ_CHECK(end_to_end ==
                   (jg_http_connection_lists(req, f->name) ? NULL : first));

        if (strcasecmp(f->name, "Content-Length") == 0) {
            cls++;
            *cl = f->value;
        } else if (strcasecmp(f->name, "Transfer-Encoding") == 0) {
            tes++;
            *te = f->value;
        } else if (strcasecmp(f->name, "Host") == 0) {
            hosts++;
        }
        h = hash_bytes(h, f->name, f->name_len);
        h = hash_bytes(h, f->value, strlen(f->value));
    }

    FUZZ_CHECK(cls <= 1);
    FUZZ_CHECK(tes <= 1);
    FUZZ_CHECK(hosts <= 1);
    FUZZ_CHECK(cls == 0 || tes == 0);
    FUZZ_CHECK(*te == NULL || strcasecmp(*te, "chunked") == 0);
    return h;
}

/* Check everything a handler can see; returns a fingerprint of it. */
static uint64_t
check_request(const struct jg_http_request *req)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    const char *cl;
    const char *te;
    const char *body;
    size_t len;

    h = check_request_line(req, h);
    h = check_fields(req, h, &cl, &te);

    body = jg_http_body(req, &len);
    FUZZ_CHECK(body != NULL);
    FUZZ_CHECK(len <= limits.max_body_bytes);
    if (cl != NULL) {
        uint64_t v = 0;
        const char *p;

        FUZZ_CHECK(*cl != '\0');
        for (p = cl; *p != '\0'; p++) {
            FUZZ_CHECK(*p >= '0' && *p <= '9');
            FUZZ_CHECK(v <= limits.max_body_bytes);
            v = v * 10 + (uint64_t)(*p - '0');
        }
        FUZZ_CHECK(v == len);
    } else if (te == NULL) {
        FUZZ_CHECK(len == 0);
    }
    return hash_bytes(h, body, len);
}

/* ---- the handler ---------------------------------------------------- */

/* Body bytes that differ with the request's position in the stream. */
static void
fill_body(char *body, size_t len, size_t seq)
{
    size_t i;

    for (i = 0; i < len; i++)
        body[i] = (char)('a' + (i + seq) % 26);
}

static void
record_reply(struct run *run, const struct expected_reply *a)
{
    if (run->reply_count == run->reply_cap) {
        run->reply_cap = run->reply_cap > 0 ? run->reply_cap * 2 : 16;
        run->replies = jg_realloc(run->replies,
                                  run->reply_cap * sizeof(*run->replies));
    }
    run->replies[run->reply_count++] = *a;
}

/* Reply to request number reply_count as its control nibble selects. */
static void
reply_request(struct run *run, struct jg_http_request *req)
{
    size_t seq = run->reply_count;
    unsigned variant = (run->control[1] >> (seq % 2 * 4)) & 0xf;
    struct expected_reply a = {0};
    char seq_text[24];

    snprintf(seq_text, sizeof(seq_text), "%zu", seq);
    jg_http_add_header(req, "X-Seq", seq_text);
    if (variant & REPLY_EXTRA_HEADER)
        jg_http_add_header(req, "Cache-Control", "no-store");
    if (variant & REPLY_CLOSE) {
        jg_http_set_close(req);
        a.close = true;
    }

    switch ((enum reply_kind)(variant & REPLY_KIND_MASK)) {
    case REPLY_SMALL:
        a.status = 200;
        a.body_len = SMALL_BODY_BYTES;
        break;
    case REPLY_LARGE:
        a.status = 200;
        a.body_len = LARGE_BODY_BYTES;
        break;
    case REPLY_BUFFER:
        a.status = 404;
        a.body_len = SMALL_BODY_BYTES;
        break;
    case REPLY_EMPTY:
        a.status = 204;
        a.body_len = 0;
        break;
    }
    a.head = jg_http_method(req) == JG_HTTP_HEAD;
    a.has_body = a.body_len > 0 && !a.head;
    fill_body(run->body, a.body_len, seq);
    record_reply(run, &a);

    if ((variant & REPLY_KIND_MASK) == REPLY_BUFFER) {
        struct evbuffer *buf = evbuffer_new();

        evbuffer_add(buf, run->body, a.body_len);
        jg_http_reply_buffer(req, a.status, buf);
        FUZZ_CHECK(evbuffer_get_length(buf) == 0);
        evbuffer_free(buf);
        return;
    }
    jg_http_reply(req, a.status, run->body, a.body_len);
}

static void
on_request(struct jg_http_request *req, void *arg)
{
    struct run *run = arg;
    uint64_t hash = check_request(req);
    size_t seq = run->reply_count;
    static const struct timeval now = {0, 0};

    /* One request at a time per connection, none after close_idle. */
    FUZZ_CHECK(run->pending == NULL);
    FUZZ_CHECK(!run->idle_closed);

    if ((run->control[0] >> (seq % 8)) & 1) {
        run->pending = req;
        run->pending_hash = hash;
        evtimer_add(run->timer, &now);
        return;
    }
    reply_request(run, req);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct run *run = arg;
    struct jg_http_request *req = run->pending;

    (void)fd;
    (void)what;
    FUZZ_CHECK(req != NULL);
    run->pending = NULL;
    FUZZ_CHECK(check_request(req) == run->pending_hash);
    reply_request(run, req);
}

/* ---- the client ----------------------------------------------------- */

/* 1 to 128 bytes for b below 128, else 128 to 16384 in steps of 128. */
static size_t
write_size(uint8_t b)
{
    return b < 128 ? (size_t)b + 1 : (size_t)(b - 127) * 128;
}

/*
 * Run one batch of ready callbacks per turn. EVLOOP_NONBLOCK alone would
 * also run the callbacks they make ready, such as a 0 ms timer, so the
 * client could never write while a request is out.
 */
static void
run_turns(struct run *run, unsigned turns)
{
    unsigned i;

    for (i = 0; i < turns; i++)
        event_base_loop(run->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

/* Read what the server has sent so far, keeping it for check_responses(). */
static void
read_responses(struct run *run)
{
    char buf[65536];

    for (;;) {
        ssize_t n = recv(run->client, buf, sizeof(buf), 0);

        /* Linux reports ECONNRESET, once the queued bytes have been read,
         * when the server closed with some of the stream still unread. */
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            run->eof = true;
            return;
        }
        if (n < 0) {
            FUZZ_CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
            return;
        }
        if (run->responses_dropped ||
            run->response_len + (size_t)n > MAX_RESPONSE_BYTES) {
            run->responses_dropped = true;
            continue;
        }
        if (run->response_len + (size_t)n > run->response_cap) {
            run->response_cap = (run->response_len + (size_t)n) * 2;
            run->responses = jg_realloc(run->responses, run->response_cap);
        }
        memcpy(run->responses + run->response_len, buf, (size_t)n);
        run->response_len += (size_t)n;
    }
}

/* Write the stream in writes of the sizes the control block gives. */
static void
send_stream(struct run *run, const uint8_t *data, size_t size)
{
    unsigned turns = 1 + (run->control[4] & 3);
    size_t pos = 0;
    size_t writes = 0;
    size_t round;

    for (round = 0; pos < size && round < MAX_ROUNDS; round++) {
        size_t n = write_size(run->control[2 + writes % 2]);
        ssize_t sent;

        /* Once the server has closed, the rest is never read. */
        if (jg_http_connections(run->srv) == 0)
            break;
        if (n > size - pos)
            n = size - pos;
        sent = send(run->client, data + pos, n, MSG_NOSIGNAL);
        if (sent > 0) {
            pos += (size_t)sent;
            writes++;
        } else {
            FUZZ_CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
        }
        run_turns(run, turns);
        read_responses(run);
    }
}

/* ---- the responses -------------------------------------------------- */

/* The value of the header name in head[0..len), or NULL. */
static const char *
find_header(const char *head, size_t len, const char *name, size_t *value_len)
{
    char pattern[64];
    const char *p;
    const char *end;
    int n = snprintf(pattern, sizeof(pattern), "\r\n%s: ", name);

    p = memmem(head, len, pattern, (size_t)n);
    if (p == NULL)
        return NULL;
    p += n;
    end = memmem(p, len - (size_t)(p - head), "\r\n", 2);
    FUZZ_CHECK(end != NULL);
    *value_len = (size_t)(end - p);
    return p;
}

static size_t
parse_size(const char *s, size_t len)
{
    size_t v = 0;
    size_t i;

    FUZZ_CHECK(len > 0 && len <= 9);
    for (i = 0; i < len; i++) {
        FUZZ_CHECK(s[i] >= '0' && s[i] <= '9');
        v = v * 10 + (size_t)(s[i] - '0');
    }
    return v;
}

static bool
is_parser_status(int status)
{
    static const int statuses[] = {400, 413, 414, 417, 431, 505};
    size_t i;

    for (i = 0; i < JG_ARRAY_LEN(statuses); i++) {
        if (status == statuses[i])
            return true;
    }
    return false;
}

/*
 * Check one final response at p, head_len bytes of head, against what the
 * handler gave for request seq, or as the parser's error response when seq
 * is past the handled requests. Returns the body bytes on the wire.
 */
static size_t
check_final(const struct run *run, const char *p, size_t head_len,
            int status, size_t seq)
{
    const struct expected_reply *a;
    const char *v;
    size_t len;
    size_t content_length;

    v = find_header(p, head_len, "Content-Length", &len);
    if (seq >= run->reply_count) {
        FUZZ_CHECK(is_parser_status(status));
        FUZZ_CHECK(v != NULL);
        content_length = parse_size(v, len);
        FUZZ_CHECK(find_header(p, head_len, "X-Seq", &len) == NULL);
        return content_length;
    }

    a = &run->replies[seq];
    FUZZ_CHECK(status == a->status);
    if (a->head) {
        FUZZ_CHECK(v == NULL);
    } else {
        FUZZ_CHECK(v != NULL);
        content_length = parse_size(v, len);
        FUZZ_CHECK(content_length == a->body_len);
    }
    v = find_header(p, head_len, "X-Seq", &len);
    FUZZ_CHECK(v != NULL);
    FUZZ_CHECK(parse_size(v, len) == seq);
    if (a->close) {
        v = find_header(p, head_len, "Connection", &len);
        FUZZ_CHECK(v != NULL && len == 5 && memcmp(v, "close", 5) == 0);
    }
    return a->has_body ? a->body_len : 0;
}

static void
check_body(const char *body, size_t len, size_t seq)
{
    size_t i;

    for (i = 0; i < len; i++)
        FUZZ_CHECK(body[i] == (char)('a' + (i + seq) % 26));
}

/*
 * Parse what the client read as a sequence of responses. When complete,
 * the server has closed normally and must have delivered every response.
 * Otherwise it was freed and the last response may be cut short.
 */
static void
check_responses(const struct run *run, bool complete)
{
    static const char interim[] = "HTTP/1.1 100 Continue\r\n\r\n";
    const char *p = run->responses;
    const char *end;
    size_t seq = 0;
    bool closed = false;

    if (run->responses_dropped)
        return;
    if (p == NULL) {
        FUZZ_CHECK(!complete || run->reply_count == 0);
        return;
    }
    end = p + run->response_len;
    while (p < end) {
        const char *head_end = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        size_t head_len;
        size_t wire_len;
        const char *v;
        size_t len;
        int status;

        if (head_end == NULL) {
            FUZZ_CHECK(!complete);
            return;
        }
        FUZZ_CHECK(!closed);
        head_len = (size_t)(head_end - p) + 4;
        FUZZ_CHECK(head_len > 13 && memcmp(p, "HTTP/1.1 ", 9) == 0);
        FUZZ_CHECK(p[9] >= '1' && p[9] <= '5' && p[12] == ' ');
        FUZZ_CHECK(p[10] >= '0' && p[10] <= '9');
        FUZZ_CHECK(p[11] >= '0' && p[11] <= '9');
        status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');

        if (status == 100) {
            FUZZ_CHECK(head_len == sizeof(interim) - 1);
            FUZZ_CHECK(memcmp(p, interim, head_len) == 0);
            p += head_len;
            continue;
        }

        wire_len = check_final(run, p, head_len, status, seq);
        v = find_header(p, head_len, "Connection", &len);
        closed = v != NULL && len == 5 && memcmp(v, "close", 5) == 0;
        /* The parser's error response always closes, and comes last. */
        if (seq >= run->reply_count)
            FUZZ_CHECK(closed);
        if ((size_t)(end - p) - head_len < wire_len) {
            FUZZ_CHECK(!complete);
            return;
        }
        if (seq < run->reply_count)
            check_body(p + head_len, wire_len, seq);
        p += head_len + wire_len;
        seq++;
    }
    FUZZ_CHECK(!complete || seq >= run->reply_count);
}

/* ---- one run -------------------------------------------------------- */

/*
 * Run loop turns until the client has read every response the server had
 * queued: two rounds in a row with nothing to read and no reply waiting
 * on the timer. A round with nothing to read means the server had nothing
 * queued, because its socket was writable in that turn.
 */
static void
wait_for_responses(struct run *run)
{
    size_t quiet = 0;
    size_t round;

    for (round = 0; round < MAX_ROUNDS && quiet < 2; round++) {
        size_t before = run->response_len;
        bool dropped = run->responses_dropped;

        run_turns(run, 1);
        read_responses(run);
        if (run->response_len == before && run->responses_dropped == dropped &&
            run->pending == NULL)
            quiet++;
        else
            quiet = 0;
    }
}

/*
 * End the run as control[4] bits 2-3 select. With 0 the client reads
 * every queued response, then shuts down its sending side and waits for
 * the server to close. With 1 it shuts down at once, perhaps while
 * responses are still queued in the server. 2 calls jg_http_close_idle()
 * first. 3 frees the server with the connection still open, perhaps with a
 * request handed out.
 */
static void
finish_run(struct run *run)
{
    unsigned ending = (run->control[4] >> 2) & 3;
    size_t round;

    if (ending == 3) {
        evtimer_del(run->timer);
        run->pending = NULL;
        jg_http_server_free(run->srv);
        run->srv = NULL;
        read_responses(run);
        FUZZ_CHECK(run->eof);
        check_responses(run, false);
        return;
    }

    if (ending == 0)
        wait_for_responses(run);
    if (ending == 2) {
        jg_http_close_idle(run->srv);
        run->idle_closed = true;
    }
    shutdown(run->client, SHUT_WR);
    for (round = 0; round < MAX_ROUNDS && jg_http_connections(run->srv) > 0;
         round++) {
        run_turns(run, 1);
        read_responses(run);
    }

    /* The server never closes a connection while a request is out. */
    FUZZ_CHECK(jg_http_connections(run->srv) == 0);
    FUZZ_CHECK(run->pending == NULL);
    read_responses(run);
    FUZZ_CHECK(run->eof);
    check_responses(run, true);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run run = {0};
    int fds[2];
    int sndbuf = SERVER_SNDBUF;

    if (size < CONTROL_BYTES)
        return 0;

    run.control = data;
    run.base = event_base_new();
    FUZZ_CHECK(run.base != NULL);
    run.srv = jg_http_server_new(run.base, &limits, on_request, &run);
    run.timer = evtimer_new(run.base, on_timer, &run);
    run.body = jg_malloc(LARGE_BODY_BYTES);
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                          0, fds) == 0);
    FUZZ_CHECK(setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &sndbuf,
                          sizeof(sndbuf)) == 0);
    FUZZ_CHECK(jg_http_adopt_fd(run.srv, fds[0]) == 0);
    run.client = fds[1];

    send_stream(&run, data + CONTROL_BYTES, size - CONTROL_BYTES);
    finish_run(&run);

    event_free(run.timer);
    jg_http_server_free(run.srv);
    event_base_free(run.base);
    close(run.client);
    jg_free(run.body);
    jg_free(run.replies);
    jg_free(run.responses);
    return 0;
}
