/*
 * The proxy port's HTTP/1.1 server: accepting, reading, parsing and
 * answering, with every client limit, on libevent's listener and events.
 *
 * Each connection owns one input buffer. A request is parsed in place: the
 * parser writes NULs after the method, the target, and each field name and
 * value, and the request hands out pointers into the buffer. Reading stops
 * while a request is being handled, so the buffer cannot move under those
 * pointers; it resumes, and the next pipelined request is parsed, once the
 * answer has been queued. Answers are written with writev(2) at once and
 * only what the socket does not take is buffered.
 */
#include "jobgate/jg_http.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "jobgate/jg_log.h"
#include "jobgate/jg_util.h"

/* Most requests fit; the buffer doubles up to the limits when one does
 * not. Kept small because every open connection holds one. */
#define INITIAL_INPUT_BYTES 1024
#define INITIAL_FIELDS 16
/*
 * Answers queued beyond this and the connection's next request waits: a
 * client that pipelines requests and never reads the answers would
 * otherwise make jobgate buffer them without bound.
 */
#define OUTPUT_HIGH_WATER (64 * 1024)
#define MAX_METHOD_BYTES 16
/* Enough for the status line, Date, Content-Length and Connection. */
#define FIXED_HEADER_BYTES 192

enum parse_result {
    PARSE_DONE = 0,
    PARSE_MORE,      /* wait for more input */
    PARSE_ERROR,     /* status and message are set */
};

struct jg_http_request {
    struct jg_http_conn *conn;
    enum jg_http_method method;
    const char *method_name;
    const char *target;
    int minor_version;
    struct jg_http_field *fields;
    size_t field_count;
    size_t field_cap;
    const char *body;
    size_t body_len;
    bool keep_alive;
    bool has_connection;          /* a Connection field is present */
    char *out;                    /* response header lines added */
    size_t out_len;
    size_t out_cap;
};

struct jg_http_conn {
    struct jg_http_server *srv;
    struct jg_http_conn *prev;
    struct jg_http_conn *next;
    int fd;
    struct event *read_event;     /* persistent while reading */
    struct event *write_event;    /* added while output is pending */
    struct event *deadline;

    char *in;
    size_t in_len;
    size_t in_cap;
    size_t scanned;               /* head end searched up to here */
    size_t head_len;              /* 0 until the head is parsed */
    size_t body_start;            /* in[] offset of the body */
    uint64_t content_length;
    bool chunked;
    bool sent_continue;
    char *chunked_body;           /* decoded chunked body */
    size_t consumed;              /* bytes of in[] the request used */

    struct evbuffer *out;
    struct jg_http_request req;
    bool busy;                    /* handed to the handler, no answer yet */
    bool processing;              /* inside process_input() */
    bool closing;                 /* close once the output is written */
    bool broken;                  /* the socket failed */
};

struct jg_http_server {
    struct event_base *base;
    struct jg_http_limits limits;
    jg_http_handler handler;
    void *handler_arg;
    struct evconnlistener *listeners[4];
    size_t listener_count;
    struct jg_http_conn *conns;
    size_t conn_count;
    struct jg_http_stats stats;
    void (*empty_cb)(void *);
    void *empty_arg;
    uint64_t last_reject_log_ms;
    time_t date_second;
    char date[40];
    /* libevent common timeouts: every connection's deadline is one of two
     * durations, so adding one appends to a queue instead of a heap. */
    struct timeval header_tv;
    struct timeval idle_tv;
    const struct timeval *header_timeout;
    const struct timeval *idle_timeout;
};

static void process_input(struct jg_http_conn *conn);
static void conn_close(struct jg_http_conn *conn);

/* ---- small helpers -------------------------------------------------- */

static bool
is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool
is_field_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

bool
jg_http_list_has_token(const char *list, const char *token)
{
    size_t n = strlen(token);
    const char *p = list;

    while (*p != '\0') {
        size_t len;

        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        len = strcspn(p, ",");
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == n && strncasecmp(p, token, n) == 0)
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

static const char *
reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
    }
}

static const char *
http_date(struct jg_http_server *srv)
{
    time_t now = time(NULL);
    struct tm tm;

    /* Formatted once a second: the hit path only copies it. */
    if (now != srv->date_second) {
        gmtime_r(&now, &tm);
        strftime(srv->date, sizeof(srv->date), "%a, %d %b %Y %H:%M:%S GMT",
                 &tm);
        srv->date_second = now;
    }
    return srv->date;
}

static void
arm_deadline(struct jg_http_conn *conn, const struct timeval *timeout)
{
    evtimer_add(conn->deadline, timeout);
}

/* ---- output --------------------------------------------------------- */

static void
flush_output(struct jg_http_conn *conn)
{
    while (evbuffer_get_length(conn->out) > 0) {
        int n = evbuffer_write(conn->out, conn->fd);

        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            event_add(conn->write_event, NULL);
            return;
        }
        conn->broken = true;
        break;
    }
    event_del(conn->write_event);
    if (conn->broken || conn->closing) {
        if (!conn->busy)
            conn_close(conn);
        return;
    }
    /* Requests held back while answers were queued go on now. */
    if (!conn->busy && !conn->processing)
        process_input(conn);
}

static void
on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    flush_output(arg);
}

/* Write the iovecs now, keeping what the socket does not take. */
static void
send_iov(struct jg_http_conn *conn, struct iovec *iov, int count)
{
    ssize_t n = 0;
    int i;

    if (!conn->broken && evbuffer_get_length(conn->out) == 0) {
        n = writev(conn->fd, iov, count);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn->broken = true;
            n = 0;
        }
    }
    if (conn->broken)
        return;

    for (i = 0; i < count; i++) {
        size_t skip = (size_t)n < iov[i].iov_len ? (size_t)n : iov[i].iov_len;

        n -= (ssize_t)skip;
        if (skip < iov[i].iov_len)
            evbuffer_add(conn->out, (const char *)iov[i].iov_base + skip,
                         iov[i].iov_len - skip);
    }
    if (evbuffer_get_length(conn->out) > 0)
        event_add(conn->write_event, NULL);
}

/* Answer a request the parser rejected, and close after it. */
static void
send_error(struct jg_http_conn *conn, int status, const char *message)
{
    char buf[512];
    struct iovec iov;
    int len;

    JG_COUNT(conn->srv->stats.bad_requests);
    len = snprintf(buf, sizeof(buf),
                   "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: "
                   "application/json\r\nContent-Length: %zu\r\nConnection: "
                   "close\r\n\r\n{\"detail\":\"%s\"}",
                   status, reason_phrase(status), http_date(conn->srv),
                   strlen(message) + 13, message);
    iov.iov_base = buf;
    iov.iov_len = (size_t)len;
    jg_log_debug("http: rejecting a request with %d: %s", status, message);
    conn->closing = true;
    event_del(conn->read_event);
    send_iov(conn, &iov, 1);
    if (evbuffer_get_length(conn->out) == 0)
        conn_close(conn);
}

/* ---- connections ---------------------------------------------------- */

static void
conn_close(struct jg_http_conn *conn)
{
    struct jg_http_server *srv = conn->srv;

    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        srv->conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    JG_COUNT_SUB(srv->conn_count, 1);

    event_free(conn->read_event);
    event_free(conn->write_event);
    event_free(conn->deadline);
    evbuffer_free(conn->out);
    close(conn->fd);
    jg_free(conn->in);
    jg_free(conn->chunked_body);
    jg_free(conn->req.fields);
    jg_free(conn->req.out);
    jg_free(conn);

    if (srv->conn_count == 0 && srv->empty_cb != NULL)
        srv->empty_cb(srv->empty_arg);
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct jg_http_conn *conn = arg;

    (void)fd;
    (void)what;
    if (conn->busy)
        return;
    JG_COUNT(conn->srv->stats.request_timeouts);
    jg_log_debug("http: closing a connection that sent no complete request "
                 "in time");
    conn_close(conn);
}

/* Move a pointer into the old input buffer to the same offset in the new. */
static const char *
rebase(const char *p, const char *old_base, char *new_base)
{
    return p == NULL ? NULL : new_base + (p - old_base);
}

/*
 * Grow the input buffer to in_cap. A head already parsed while its body
 * is still arriving has pointers into the buffer, which move with it; the
 * old buffer is freed only after they have been moved.
 */
static void
grow_input(struct jg_http_conn *conn)
{
    struct jg_http_request *req = &conn->req;
    char *old = conn->in;
    size_t i;

    conn->in = jg_malloc(conn->in_cap);
    memcpy(conn->in, old, conn->in_len);
    if (conn->head_len > 0) {
        req->method_name = rebase(req->method_name, old, conn->in);
        req->target = rebase(req->target, old, conn->in);
        for (i = 0; i < req->field_count; i++) {
            req->fields[i].name = rebase(req->fields[i].name, old, conn->in);
            req->fields[i].value =
                rebase(req->fields[i].value, old, conn->in);
        }
    }
    jg_free(old);
}

static void
on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct jg_http_conn *conn = arg;
    ssize_t n;

    (void)what;
    /* Pipelined bytes, or the end of the stream, wait for the answer. */
    if (conn->busy) {
        event_del(conn->read_event);
        return;
    }
    if (conn->in_len == conn->in_cap) {
        size_t max = conn->srv->limits.max_header_bytes +
                     conn->srv->limits.max_body_bytes + 65536;

        if (conn->in_cap >= max) {
            send_error(conn, 413, "request too large");
            return;
        }
        conn->in_cap = conn->in_cap * 2 < max ? conn->in_cap * 2 : max;
        grow_input(conn);
    }

    n = recv(fd, conn->in + conn->in_len, conn->in_cap - conn->in_len, 0);
    if (n == 0 && evbuffer_get_length(conn->out) > 0) {
        /* The client shut down only its sending side: deliver the answers
         * already queued, then close, as flush_output() does. */
        conn->closing = true;
        event_del(conn->read_event);
        return;
    }
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
                   errno != EINTR)) {
        conn_close(conn);
        return;
    }
    if (n < 0)
        return;
    conn->in_len += (size_t)n;
    process_input(conn);
}

/* Start serving fd, a connected non-blocking socket the server now owns. */
static void
conn_open(struct jg_http_server *srv, int fd)
{
    struct jg_http_conn *conn;

    conn = jg_calloc(1, sizeof(*conn));
    conn->srv = srv;
    conn->fd = fd;
    conn->in_cap = INITIAL_INPUT_BYTES;
    conn->in = jg_malloc(conn->in_cap);
    conn->out = evbuffer_new();
    conn->req.conn = conn;
    conn->req.field_cap = INITIAL_FIELDS;
    conn->req.fields = jg_calloc(conn->req.field_cap,
                                 sizeof(*conn->req.fields));
    conn->read_event = event_new(srv->base, fd, EV_READ | EV_PERSIST,
                                 on_readable, conn);
    conn->write_event = event_new(srv->base, fd, EV_WRITE, on_writable,
                                  conn);
    conn->deadline = evtimer_new(srv->base, on_deadline, conn);

    conn->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = conn;
    srv->conns = conn;
    JG_COUNT(srv->conn_count);
    JG_COUNT(srv->stats.connections_accepted);

    event_add(conn->read_event, NULL);
    arm_deadline(conn, srv->header_timeout);
}

static void
on_accept(struct evconnlistener *listener, evutil_socket_t fd,
          struct sockaddr *addr, int socklen, void *arg)
{
    struct jg_http_server *srv = arg;

    (void)listener;
    (void)addr;
    (void)socklen;
    if (srv->conn_count >= srv->limits.max_connections) {
        uint64_t now = jg_now_ms();

        JG_COUNT(srv->stats.connections_rejected);
        /* One line a second at most: a flood must not flood the log. */
        if (now - srv->last_reject_log_ms >= 1000) {
            jg_log_warn("closing new connections: max_connections (%zu) "
                        "reached; %llu rejected so far",
                        srv->limits.max_connections,
                        (unsigned long long)srv->stats.connections_rejected);
            srv->last_reject_log_ms = now;
        }
        close(fd);
        return;
    }
    conn_open(srv, fd);
}

/* ---- parsing -------------------------------------------------------- */

static enum jg_http_method
method_from_name(const char *name)
{
    static const struct {
        const char *name;
        enum jg_http_method method;
    } methods[] = {
        {"GET", JG_HTTP_GET},         {"HEAD", JG_HTTP_HEAD},
        {"POST", JG_HTTP_POST},       {"PUT", JG_HTTP_PUT},
        {"DELETE", JG_HTTP_DELETE},   {"OPTIONS", JG_HTTP_OPTIONS},
        {"PATCH", JG_HTTP_PATCH},
    };
    size_t i;

    for (i = 0; i < JG_ARRAY_LEN(methods); i++) {
        if (strcmp(name, methods[i].name) == 0)
            return methods[i].method;
    }
    return JG_HTTP_OTHER;
}

struct parse_error {
    int status;
    const char *message;
};

static enum parse_result
fail(struct parse_error *err, int status, const char *message)
{
    err->status = status;
    err->message = message;
    return PARSE_ERROR;
}

/* Parse "METHOD SP target SP HTTP/1.x" ending at end (the CR). */
static enum parse_result
parse_request_line(struct jg_http_conn *conn, char *line, char *end,
                   struct parse_error *err)
{
    struct jg_http_request *req = &conn->req;
    char *sp1;
    char *sp2;
    char *p;

    for (p = line; p < end && is_tchar((unsigned char)*p); p++)
        ;
    if (p == line || p == end || *p != ' ' || p - line > MAX_METHOD_BYTES)
        return fail(err, 400, "invalid request line");
    sp1 = p;

    for (p = sp1 + 1; p < end && (unsigned char)*p > 0x20 &&
                      (unsigned char)*p < 0x7f;
         p++)
        ;
    if (p == sp1 + 1 || p == end || *p != ' ')
        return fail(err, 400, "invalid request target");
    sp2 = p;
    if ((size_t)(sp2 - sp1 - 1) > conn->srv->limits.max_uri_bytes)
        return fail(err, 414, "request target too long");

    if (end - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        if (end - sp2 - 1 >= 5 && memcmp(sp2 + 1, "HTTP/", 5) == 0)
            return fail(err, 505, "only HTTP/1.0 and HTTP/1.1 are served");
        return fail(err, 400, "invalid request line");
    }
    if (sp2[8] != '0' && sp2[8] != '1')
        return fail(err, 505, "only HTTP/1.0 and HTTP/1.1 are served");

    *sp1 = '\0';
    *sp2 = '\0';
    req->method_name = line;
    req->method = method_from_name(line);
    req->target = sp1 + 1;
    req->minor_version = sp2[8] - '0';
    return PARSE_DONE;
}

/* Parse one "name: value" line ending at end (the CR). */
static enum parse_result
parse_field(struct jg_http_conn *conn, char *line, char *end,
            struct parse_error *err)
{
    struct jg_http_request *req = &conn->req;
    char *colon;
    char *value;
    char *p;

    if (line[0] == ' ' || line[0] == '\t')
        return fail(err, 400, "obsolete line folding");
    for (colon = line; colon < end && is_tchar((unsigned char)*colon);
         colon++)
        ;
    if (colon == line || colon == end || *colon != ':')
        return fail(err, 400, "invalid header field");
    if (req->field_count >= conn->srv->limits.max_headers)
        return fail(err, 431, "too many header fields");
    if (req->field_count == req->field_cap) {
        req->field_cap *= 2;
        req->fields = jg_realloc(req->fields,
                                 req->field_cap * sizeof(*req->fields));
    }

    for (p = colon + 1; p < end; p++) {
        if (!is_field_char((unsigned char)*p))
            return fail(err, 400, "invalid header field value");
    }
    value = colon + 1;
    while (value < end && (*value == ' ' || *value == '\t'))
        value++;
    while (end > value && (end[-1] == ' ' || end[-1] == '\t'))
        end--;

    *colon = '\0';
    *end = '\0';
    req->fields[req->field_count].name = line;
    req->fields[req->field_count].name_len = (size_t)(colon - line);
    req->fields[req->field_count].value = value;
    req->field_count++;
    return PARSE_DONE;
}

/* Decide how the body is framed and whether the connection stays open. */
static enum parse_result
read_framing(struct jg_http_conn *conn, struct parse_error *err)
{
    struct jg_http_request *req = &conn->req;
    const char *te = NULL;
    const char *cl = NULL;
    const char *connection;
    size_t hosts = 0;
    size_t i;

    for (i = 0; i < req->field_count; i++) {
        const struct jg_http_field *f = &req->fields[i];

        if (strcasecmp(f->name, "Content-Length") == 0) {
            if (cl != NULL)
                return fail(err, 400, "more than one Content-Length");
            cl = f->value;
        } else if (strcasecmp(f->name, "Transfer-Encoding") == 0) {
            if (te != NULL)
                return fail(err, 400, "more than one Transfer-Encoding");
            te = f->value;
        } else if (strcasecmp(f->name, "Host") == 0) {
            hosts++;
        }
    }
    if (hosts > 1 || (hosts == 0 && req->minor_version == 1))
        return fail(err, 400, "a request needs exactly one Host header");

    conn->chunked = false;
    conn->content_length = 0;
    if (te != NULL) {
        if (cl != NULL)
            return fail(err, 400, "both Transfer-Encoding and "
                                  "Content-Length");
        if (strcasecmp(te, "chunked") != 0 || req->minor_version == 0)
            return fail(err, 400, "unsupported Transfer-Encoding");
        conn->chunked = true;
    } else if (cl != NULL) {
        uint64_t v = 0;
        const char *p;

        if (*cl == '\0')
            return fail(err, 400, "invalid Content-Length");
        for (p = cl; *p != '\0'; p++) {
            if (*p < '0' || *p > '9')
                return fail(err, 400, "invalid Content-Length");
            if (v > (UINT64_MAX - 9) / 10)
                return fail(err, 413, "request body too large");
            v = v * 10 + (uint64_t)(*p - '0');
        }
        if (v > conn->srv->limits.max_body_bytes)
            return fail(err, 413, "request body too large");
        conn->content_length = v;
    }

    connection = jg_http_find(req, "Connection");
    req->has_connection = connection != NULL;
    if (req->minor_version == 1)
        req->keep_alive = connection == NULL ||
                          !jg_http_list_has_token(connection, "close");
    else
        req->keep_alive = connection != NULL &&
                          jg_http_list_has_token(connection, "keep-alive");
    return PARSE_DONE;
}

/* Parse the head in[0..head_len), which ends with an empty line. */
static enum parse_result
parse_head(struct jg_http_conn *conn, struct parse_error *err)
{
    char *p = conn->in;
    char *end = conn->in + conn->head_len - 2;  /* the final CRLF */
    bool first = true;
    enum parse_result res;

    conn->req.field_count = 0;
    while (p < end) {
        char *cr = memchr(p, '\r', (size_t)(end - p));

        /* Every line ends in CRLF; a lone CR or LF is not accepted. */
        if (cr == NULL || cr[1] != '\n' || memchr(p, '\n', (size_t)(cr - p)))
            return fail(err, 400, "lines must end with CRLF");
        if (first)
            res = parse_request_line(conn, p, cr, err);
        else
            res = parse_field(conn, p, cr, err);
        if (res != PARSE_DONE)
            return res;
        first = false;
        p = cr + 2;
    }
    if (first)
        return fail(err, 400, "empty request");
    return read_framing(conn, err);
}

static bool
all_field_chars(const char *p, const char *end)
{
    for (; p < end; p++) {
        if (!is_field_char((unsigned char)*p))
            return false;
    }
    return true;
}

/* True for "token: value" with no CTL but HTAB in the value. */
static bool
valid_field_line(const char *p, const char *end)
{
    const char *q = p;

    while (q < end && is_tchar((unsigned char)*q))
        q++;
    return q > p && q < end && *q == ':' && all_field_chars(q + 1, end);
}

/* Strict hex chunk size: digits only, leading zeros allowed, no overflow. */
static bool
parse_chunk_size(const char *p, const char *end, uint64_t *out)
{
    uint64_t v = 0;
    const char *q;

    if (p == end)
        return false;
    for (q = p; q < end; q++) {
        int d;

        if (*q >= '0' && *q <= '9')
            d = *q - '0';
        else if (*q >= 'a' && *q <= 'f')
            d = *q - 'a' + 10;
        else if (*q >= 'A' && *q <= 'F')
            d = *q - 'A' + 10;
        else
            return false;
        if (v > (UINT64_MAX >> 4))
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return true;
}

/*
 * Decode a chunked body that starts at in[body_start]. Chunk extensions
 * are allowed and ignored, and so are trailer fields.
 */
static enum parse_result
decode_chunked(struct jg_http_conn *conn, struct parse_error *err)
{
    const struct jg_http_limits *limits = &conn->srv->limits;
    const char *p = conn->in + conn->body_start;
    const char *end = conn->in + conn->in_len;
    const char *trailer;
    size_t total = 0;

    jg_free(conn->chunked_body);
    conn->chunked_body = NULL;
    for (;;) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        const char *size_end;
        uint64_t size;

        if (memchr(p, '\n', (size_t)((eol != NULL ? eol : end) - p)) != NULL)
            return fail(err, 400, "chunk lines must end with CRLF");
        if (eol == NULL || eol + 1 >= end)
            return (size_t)(end - p) > 4096 ? fail(err, 400, "invalid chunk")
                                            : PARSE_MORE;
        if (eol[1] != '\n')
            return fail(err, 400, "invalid chunk");
        size_end = memchr(p, ';', (size_t)(eol - p));
        if (size_end == NULL)
            size_end = eol;
        if (!parse_chunk_size(p, size_end, &size))
            return fail(err, 400, "invalid chunk size");
        if (!all_field_chars(size_end, eol))
            return fail(err, 400, "invalid chunk extension");
        if (size > limits->max_body_bytes - total)
            return fail(err, 413, "request body too large");
        p = eol + 2;

        if (size == 0)
            break;
        if ((uint64_t)(end - p) < size + 2)
            return PARSE_MORE;
        if (p[size] != '\r' || p[size + 1] != '\n')
            return fail(err, 400, "invalid chunk");
        conn->chunked_body = jg_realloc(conn->chunked_body, total + size);
        memcpy(conn->chunked_body + total, p, size);
        total += size;
        p += size + 2;
    }

    /* Trailer fields, then the empty line, within max_header_bytes. */
    trailer = p;
    for (;;) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));

        if (memchr(p, '\n', (size_t)((eol != NULL ? eol : end) - p)) != NULL)
            return fail(err, 400, "invalid chunk trailer");
        if (eol == NULL || eol + 1 >= end)
            return (size_t)(end - trailer) > limits->max_header_bytes
                       ? fail(err, 431, "chunk trailer too large")
                       : PARSE_MORE;
        if (eol[1] != '\n')
            return fail(err, 400, "invalid chunk trailer");
        if (eol == p) {
            p += 2;
            break;
        }
        if (!valid_field_line(p, eol))
            return fail(err, 400, "invalid chunk trailer");
        p = eol + 2;
        if ((size_t)(p - trailer) > limits->max_header_bytes)
            return fail(err, 431, "chunk trailer too large");
    }

    conn->req.body = conn->chunked_body != NULL ? conn->chunked_body : "";
    conn->req.body_len = total;
    conn->consumed = (size_t)(p - conn->in);
    return PARSE_DONE;
}

static void
send_continue(struct jg_http_conn *conn)
{
    static const char line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct iovec iov = {.iov_base = (void *)line, .iov_len = sizeof(line) - 1};

    conn->sent_continue = true;
    send_iov(conn, &iov, 1);
}

/*
 * True when buf[from..len) holds an LF without a CR before it, or a CR
 * followed by anything but LF. Such a head is rejected at once rather
 * than left to wait for a CRLF CRLF that will never come.
 */
static bool
has_bare_line_end(const char *buf, size_t from, size_t len)
{
    size_t i;

    for (i = from; i < len; i++) {
        if (buf[i] == '\n' && (i == 0 || buf[i - 1] != '\r'))
            return true;
        if (buf[i] == '\r' && i + 1 < len && buf[i + 1] != '\n')
            return true;
    }
    return false;
}

/* Find and parse the head; PARSE_DONE once it is parsed. */
static enum parse_result
read_head(struct jg_http_conn *conn, struct parse_error *err)
{
    const struct jg_http_limits *limits = &conn->srv->limits;
    size_t from = conn->scanned > 3 ? conn->scanned - 3 : 0;
    size_t skip = 0;
    const char *end;

    /* Empty lines before a request are allowed and skipped. */
    while (skip + 1 < conn->in_len && conn->in[skip] == '\r' &&
           conn->in[skip + 1] == '\n')
        skip += 2;
    if (skip > 0) {
        memmove(conn->in, conn->in + skip, conn->in_len - skip);
        conn->in_len -= skip;
        from = 0;
    }

    end = memmem(conn->in + from, conn->in_len - from, "\r\n\r\n", 4);
    /* Only the head is checked: a body may hold any bytes. */
    if (has_bare_line_end(conn->in, from,
                          end != NULL ? (size_t)(end - conn->in) + 4
                                      : conn->in_len))
        return fail(err, 400, "lines must end with CRLF");
    if (end == NULL) {
        conn->scanned = conn->in_len;
        if (conn->in_len > limits->max_header_bytes)
            return fail(err, 431, "request header section too large");
        return PARSE_MORE;
    }
    conn->head_len = (size_t)(end - conn->in) + 4;
    if (conn->head_len > limits->max_header_bytes)
        return fail(err, 431, "request header section too large");
    return parse_head(conn, err);
}

/* Read the body once the head is parsed; PARSE_DONE when it is whole. */
static enum parse_result
read_body(struct jg_http_conn *conn, struct parse_error *err)
{
    const char *expect;

    conn->body_start = conn->head_len;
    if (conn->chunked || conn->content_length > 0) {
        size_t have = conn->in_len - conn->body_start;

        expect = jg_http_find(&conn->req, "Expect");
        if (expect != NULL && strcasecmp(expect, "100-continue") != 0)
            return fail(err, 417, "unsupported Expect");
        /* An HTTP/1.0 client gets no 1xx answer (RFC 9110, 10.1.1). */
        if (expect != NULL && have == 0 && !conn->sent_continue &&
            conn->req.minor_version == 1)
            send_continue(conn);
    }
    if (conn->chunked)
        return decode_chunked(conn, err);
    if (conn->in_len - conn->body_start < conn->content_length)
        return PARSE_MORE;
    conn->req.body = conn->in + conn->body_start;
    conn->req.body_len = (size_t)conn->content_length;
    conn->consumed = conn->body_start + (size_t)conn->content_length;
    return PARSE_DONE;
}

static void
dispatch(struct jg_http_conn *conn)
{
    struct jg_http_request *req = &conn->req;

    /*
     * The read event and the deadline stay armed: most requests are
     * answered before the handler returns, and on_readable() and
     * on_deadline() leave a busy connection alone. Removing and adding
     * the read event would cost an epoll_ctl(2) per request.
     */
    conn->busy = true;
    req->out_len = 0;
    conn->srv->handler(req, conn->srv->handler_arg);
}

/* Parse and hand out every complete request in the buffer, in order. */
static void
process_input(struct jg_http_conn *conn)
{
    conn->processing = true;
    while (!conn->busy && !conn->closing && !conn->broken &&
           evbuffer_get_length(conn->out) < OUTPUT_HIGH_WATER) {
        struct parse_error err = {0};
        enum parse_result res = PARSE_DONE;

        if (conn->head_len == 0)
            res = read_head(conn, &err);
        if (res == PARSE_DONE)
            res = read_body(conn, &err);
        if (res == PARSE_MORE)
            break;
        if (res == PARSE_ERROR) {
            conn->processing = false;
            send_error(conn, err.status, err.message);
            return;
        }
        dispatch(conn);
    }
    conn->processing = false;
    if (!conn->busy &&
        (conn->broken ||
         (conn->closing && evbuffer_get_length(conn->out) == 0))) {
        conn_close(conn);
        return;
    }
    if (conn->busy || conn->closing)
        return;
    if (evbuffer_get_length(conn->out) < OUTPUT_HIGH_WATER)
        event_add(conn->read_event, NULL);
    else
        event_del(conn->read_event);
}

/* The answer is queued: drop the request's bytes and go on. */
static void
finish_request(struct jg_http_conn *conn)
{
    conn->busy = false;
    if (conn->consumed < conn->in_len)
        memmove(conn->in, conn->in + conn->consumed,
                conn->in_len - conn->consumed);
    conn->in_len -= conn->consumed;
    conn->consumed = 0;
    conn->head_len = 0;
    conn->scanned = 0;
    conn->sent_continue = false;
    /* Only chunked requests have one; skip the free(NULL) of every hit. */
    if (conn->chunked_body != NULL) {
        jg_free(conn->chunked_body);
        conn->chunked_body = NULL;
    }
    /* Also while a closing connection drains a slow reader. */
    if (!conn->broken)
        arm_deadline(conn, conn->srv->idle_timeout);

    /* Inside process_input() its loop takes the next request or closes. */
    if (conn->processing)
        return;
    if (conn->broken ||
        (conn->closing && evbuffer_get_length(conn->out) == 0)) {
        conn_close(conn);
        return;
    }
    if (!conn->closing)
        process_input(conn);
}

/* ---- request accessors ---------------------------------------------- */

enum jg_http_method
jg_http_method(const struct jg_http_request *req)
{
    return req->method;
}

const char *
jg_http_method_name(const struct jg_http_request *req)
{
    return req->method_name;
}

const char *
jg_http_target(const struct jg_http_request *req)
{
    return req->target;
}

size_t
jg_http_field_count(const struct jg_http_request *req)
{
    return req->field_count;
}

const struct jg_http_field *
jg_http_fields(const struct jg_http_request *req)
{
    return req->fields;
}

const char *
jg_http_find(const struct jg_http_request *req, const char *name)
{
    size_t len = strlen(name);
    size_t i;

    /* Comparing lengths first skips almost every strcasecmp(). */
    for (i = 0; i < req->field_count; i++) {
        if (req->fields[i].name_len == len &&
            strcasecmp(req->fields[i].name, name) == 0)
            return req->fields[i].value;
    }
    return NULL;
}

bool
jg_http_connection_lists(const struct jg_http_request *req, const char *name)
{
    size_t i;

    if (!req->has_connection)
        return false;
    for (i = 0; i < req->field_count; i++) {
        if (req->fields[i].name_len == 10 &&
            strcasecmp(req->fields[i].name, "Connection") == 0 &&
            jg_http_list_has_token(req->fields[i].value, name))
            return true;
    }
    return false;
}

const char *
jg_http_find_end_to_end(const struct jg_http_request *req, const char *name)
{
    if (jg_http_connection_lists(req, name))
        return NULL;
    return jg_http_find(req, name);
}

const char *
jg_http_body(const struct jg_http_request *req, size_t *len)
{
    *len = req->body_len;
    return req->body_len > 0 ? req->body : "";
}

/* ---- answers -------------------------------------------------------- */

void
jg_http_add_header(struct jg_http_request *req, const char *name,
                   const char *value)
{
    size_t name_len = strlen(name);
    size_t value_len = strlen(value);
    size_t need = name_len + value_len + 4;
    char *p;

    if (req->out_len + need > req->out_cap) {
        req->out_cap = (req->out_len + need) * 2;
        req->out = jg_realloc(req->out, req->out_cap);
    }
    /* Copied by hand: this runs several times on every hit. */
    p = req->out + req->out_len;
    memcpy(p, name, name_len);
    p += name_len;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, value, value_len);
    p += value_len;
    *p++ = '\r';
    *p++ = '\n';
    req->out_len += need;
}

void
jg_http_set_close(struct jg_http_request *req)
{
    req->conn->closing = true;
}

static bool
status_has_body(const struct jg_http_request *req, int status)
{
    return req->method != JG_HTTP_HEAD && status != 204 && status != 304 &&
           status >= 200;
}

static char *
append(char *p, const char *s)
{
    size_t len = strlen(s);

    memcpy(p, s, len);
    return p + len;
}

/* Write value in decimal at p; returns the end. */
static char *
append_decimal(char *p, uint64_t value)
{
    char digits[20];
    size_t n = 0;

    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value > 0);
    while (n > 0)
        *p++ = digits[--n];
    return p;
}

/*
 * Build the status line and fixed headers into buf, which has
 * FIXED_HEADER_BYTES; returns the length. Written by hand rather than
 * with snprintf(), which cost more than the rest of a hit.
 */
static size_t
format_head(struct jg_http_request *req, int status, size_t body_len,
            char *buf)
{
    struct jg_http_conn *conn = req->conn;
    char *p = buf;

    if (!req->keep_alive)
        conn->closing = true;
    p = append(p, "HTTP/1.1 ");
    p = append_decimal(p, (uint64_t)(status >= 100 && status <= 999
                                         ? status : 500));
    *p++ = ' ';
    p = append(p, reason_phrase(status));
    p = append(p, "\r\nDate: ");
    p = append(p, http_date(conn->srv));
    p = append(p, "\r\n");
    /* A HEAD answer relays no body, so it cannot state the body's length
     * truthfully: the upstream's length is not kept. */
    if (req->method != JG_HTTP_HEAD) {
        p = append(p, "Content-Length: ");
        p = append_decimal(p, body_len);
        p = append(p, "\r\n");
    }
    if (conn->closing)
        p = append(p, "Connection: close\r\n");
    else if (req->minor_version == 0)
        p = append(p, "Connection: keep-alive\r\n");
    return (size_t)(p - buf);
}

void
jg_http_reply(struct jg_http_request *req, int status, const void *body,
              size_t len)
{
    struct jg_http_conn *conn = req->conn;
    char head[FIXED_HEADER_BYTES];
    struct iovec iov[4];
    size_t head_len;
    int count = 0;

    head_len = format_head(req, status, len, head);
    iov[count].iov_base = head;
    iov[count++].iov_len = head_len;
    if (req->out_len > 0) {
        iov[count].iov_base = req->out;
        iov[count++].iov_len = req->out_len;
    }
    iov[count].iov_base = (void *)"\r\n";
    iov[count++].iov_len = 2;
    if (len > 0 && status_has_body(req, status)) {
        iov[count].iov_base = (void *)body;
        iov[count++].iov_len = len;
    }
    send_iov(conn, iov, count);
    finish_request(conn);
}

void
jg_http_reply_buffer(struct jg_http_request *req, int status,
                     struct evbuffer *body)
{
    size_t len = body != NULL ? evbuffer_get_length(body) : 0;
    const void *data = len > 0 ? evbuffer_pullup(body, -1) : NULL;

    jg_http_reply(req, status, data, len);
    if (body != NULL)
        evbuffer_drain(body, len);
}

/* ---- the server ----------------------------------------------------- */

/*
 * Point *out at the base's common timeout of ms milliseconds, or at
 * plain, set to the same duration, when the base cannot make one: a NULL
 * timeout would make evtimer_add() wait forever.
 */
static void
set_timeout(struct event_base *base, uint64_t ms, struct timeval *plain,
            const struct timeval **out)
{
    plain->tv_sec = (time_t)(ms / 1000);
    plain->tv_usec = (suseconds_t)(ms % 1000) * 1000;
    *out = event_base_init_common_timeout(base, plain);
    if (*out == NULL)
        *out = plain;
}

struct jg_http_server *
jg_http_server_new(struct event_base *base,
                   const struct jg_http_limits *limits,
                   jg_http_handler handler, void *arg)
{
    struct jg_http_server *srv = jg_calloc(1, sizeof(*srv));

    srv->base = base;
    srv->limits = *limits;
    srv->handler = handler;
    srv->handler_arg = arg;
    set_timeout(base, limits->header_timeout_ms, &srv->header_tv,
                &srv->header_timeout);
    set_timeout(base, limits->idle_timeout_ms, &srv->idle_tv,
                &srv->idle_timeout);
    return srv;
}

int
jg_http_listen_fd(struct jg_http_server *srv, int fd)
{
    struct evconnlistener *l;

    if (srv->listener_count == JG_ARRAY_LEN(srv->listeners))
        return -1;
    evutil_make_socket_nonblocking(fd);
    l = evconnlistener_new(srv->base, on_accept, srv,
                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1,
                           fd);
    if (l == NULL)
        return -1;
    srv->listeners[srv->listener_count++] = l;
    return 0;
}

int
jg_http_adopt_fd(struct jg_http_server *srv, int fd)
{
    if (srv->conn_count >= srv->limits.max_connections) {
        JG_COUNT(srv->stats.connections_rejected);
        return -1;
    }
    evutil_make_socket_nonblocking(fd);
    conn_open(srv, fd);
    return 0;
}

void
jg_http_stop_accepting(struct jg_http_server *srv)
{
    size_t i;

    for (i = 0; i < srv->listener_count; i++)
        evconnlistener_free(srv->listeners[i]);
    srv->listener_count = 0;
}

size_t
jg_http_close_idle(struct jg_http_server *srv)
{
    struct jg_http_conn *conn = srv->conns;

    while (conn != NULL) {
        struct jg_http_conn *next = conn->next;

        conn->closing = true;
        if (!conn->busy && evbuffer_get_length(conn->out) == 0)
            conn_close(conn);
        else
            event_del(conn->read_event);
        conn = next;
    }
    return srv->conn_count;
}

size_t
jg_http_connections(const struct jg_http_server *srv)
{
    /* The metrics page of another worker thread may ask. */
    return __atomic_load_n(&srv->conn_count, __ATOMIC_RELAXED);
}

void
jg_http_set_empty_cb(struct jg_http_server *srv, void (*cb)(void *),
                     void *arg)
{
    srv->empty_cb = cb;
    srv->empty_arg = arg;
}

const struct jg_http_stats *
jg_http_stats(const struct jg_http_server *srv)
{
    return &srv->stats;
}

void
jg_http_server_free(struct jg_http_server *srv)
{
    if (srv == NULL)
        return;
    jg_http_stop_accepting(srv);
    srv->empty_cb = NULL;
    while (srv->conns != NULL)
        conn_close(srv->conns);
    jg_free(srv);
}
