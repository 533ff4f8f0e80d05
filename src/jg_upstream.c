/*
 * The upstream client: libcurl's multi interface driven by the libevent loop
 * through curl_multi_socket_action. libcurl names the sockets to watch, and
 * each gets one event that is re-assigned when the interest changes. Its
 * timeouts share one timer event. Every call into libcurl is followed by a drain
 * of its completion queue. Finished fetches move to a list of their own
 * before any callback runs, so a callback may start new fetches or cancel
 * other ones, including ones that finished in the same loop turn. Response
 * headers are collected without hop-by-hop fields and bodies are kept as
 * received, because the caller relays both to its client.
 */
#include "jobgate/jg_upstream.h"

/* Before libevent's headers, which then reuse its TAILQ macros. */
#include <sys/queue.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobgate/jg_log.h"
#include "jobgate/jg_util.h"

/*
 * Maximum size of one response head, status line included; a 1xx interim
 * head starts a new count. libcurl's own cap is 100 KiB per header line.
 */
#define MAX_HEAD_BYTES (64 * 1024)

enum fetch_state {
    FETCH_RUNNING,   /* in the multi handle */
    FETCH_FINISHED,  /* on up->finished, callback not run yet */
    FETCH_REPORTING, /* its callback is running */
};

/* One libcurl socket that the loop watches. */
struct sock_watch {
    struct event *ev;
    struct sock_watch *prev;
    struct sock_watch *next;
};

struct fetch_list {
    struct jg_fetch *head;
    struct jg_fetch *tail;
};

struct jg_fetch {
    struct jg_upstream *up;
    CURL *easy;
    enum fetch_state state;
    bool in_multi;
    struct jg_fetch *prev;          /* in up->running or up->finished */
    struct jg_fetch *next;

    char *method;                   /* copies, for the log */
    char *target;
    struct curl_slist *request_headers;
    char *request_body;

    struct evkeyvalq headers;       /* of the newest response head */
    struct evbuffer *body;
    char *field_name;               /* header field waiting for folded lines */
    char *field_value;
    char *connection_tokens;        /* Connection values, comma-joined */
    size_t head_bytes;
    bool head_complete;             /* later header lines are trailers */

    enum jg_fetch_error abort_error; /* why a callback of ours stopped it */
    const char *abort_reason;
    enum jg_fetch_error error;
    long status;
    char error_text[CURL_ERROR_SIZE];
    uint64_t started_ms;
    uint64_t finished_ms;

    jg_fetch_cb cb;
    void *cb_arg;
};

struct jg_upstream {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;            /* libcurl's single timeout */
    struct event *report;           /* reports fetches that failed to start */
    char *base_url;
    long timeout_ms;
    long connect_timeout_ms;
    uint64_t max_response_bytes;

    struct fetch_list running;
    struct fetch_list finished;
    struct sock_watch *watches;
    size_t active;
};

/* The length of the target's path: log lines leave the query out, since a
 * query may carry a token. */
static int
path_len(const struct jg_fetch *fetch)
{
    return (int)strcspn(fetch->target, "?");
}

/*
 * Fields that a proxy must not forward: the hop-by-hop list of RFC 2616 and
 * the legacy Proxy-Connection. Content-Length goes too, because the server
 * recomputes it for the body it sends.
 */
static const char *const dropped_fields[] = {
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Proxy-Connection",
    "Content-Length",
};

static void
out_of_memory(const char *what)
{
    fprintf(stderr, "jobgate: out of memory creating %s\n", what);
    abort();
}

static long
clamp_long(uint64_t value)
{
    return value > (uint64_t)LONG_MAX ? LONG_MAX : (long)value;
}

static void
list_append(struct fetch_list *list, struct jg_fetch *fetch)
{
    fetch->prev = list->tail;
    fetch->next = NULL;
    if (list->tail != NULL)
        list->tail->next = fetch;
    else
        list->head = fetch;
    list->tail = fetch;
}

static void
list_remove(struct fetch_list *list, struct jg_fetch *fetch)
{
    if (fetch->prev != NULL)
        fetch->prev->next = fetch->next;
    else
        list->head = fetch->next;
    if (fetch->next != NULL)
        fetch->next->prev = fetch->prev;
    else
        list->tail = fetch->prev;
    fetch->prev = NULL;
    fetch->next = NULL;
}

/* ---- Response heads ---------------------------------------------------- */

static bool
is_dropped_field(const char *name)
{
    size_t i;

    for (i = 0; i < JG_ARRAY_LEN(dropped_fields); i++) {
        if (jg_ascii_casecmp_n(name, strlen(name), dropped_fields[i]) == 0)
            return true;
    }
    return false;
}

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static char *
join_with(char *head, const char *sep, const char *tail, size_t tail_len)
{
    size_t head_len = head != NULL ? strlen(head) : 0;
    size_t sep_len = head_len > 0 ? strlen(sep) : 0;
    char *joined = jg_realloc(head, head_len + sep_len + tail_len + 1);

    memcpy(joined + head_len, sep, sep_len);
    memcpy(joined + head_len + sep_len, tail, tail_len);
    joined[head_len + sep_len + tail_len] = '\0';
    return joined;
}

static void
discard_field(struct jg_fetch *fetch)
{
    jg_free(fetch->field_name);
    jg_free(fetch->field_value);
    fetch->field_name = NULL;
    fetch->field_value = NULL;
}

/* Store the field read so far, now that no folded line can follow it. */
static void
commit_field(struct jg_fetch *fetch)
{
    const char *name = fetch->field_name;
    const char *value = fetch->field_value;

    if (name == NULL)
        return;

    if (jg_ascii_casecmp_n(name, strlen(name), "Connection") == 0) {
        fetch->connection_tokens =
            join_with(fetch->connection_tokens, ",", value, strlen(value));
    } else if (!is_dropped_field(name) &&
               evhttp_add_header(&fetch->headers, name, value) != 0) {
        /* Only the name is logged: values may carry credentials. */
        jg_log_debug("upstream %s %.*s: dropped invalid response header %s",
                     fetch->method, path_len(fetch), fetch->target, name);
    }
    discard_field(fetch);
}

/* Remove every field that a Connection header names as hop-by-hop. */
static void
drop_connection_fields(struct jg_fetch *fetch)
{
    const char *p = fetch->connection_tokens;

    while (p != NULL && *p != '\0') {
        size_t len = strcspn(p, ",");
        size_t start = 0;
        size_t end = len;
        char *name;

        while (start < end && is_ows(p[start]))
            start++;
        while (end > start && is_ows(p[end - 1]))
            end--;

        if (end > start) {
            name = jg_strndup(p + start, end - start);
            while (evhttp_remove_header(&fetch->headers, name) == 0)
                continue;
            jg_free(name);
        }
        p += len;
        if (*p == ',')
            p++;
    }
}

static void
start_response_head(struct jg_fetch *fetch)
{
    evhttp_clear_headers(&fetch->headers);
    discard_field(fetch);
    jg_free(fetch->connection_tokens);
    fetch->connection_tokens = NULL;
    fetch->head_complete = false;
}

static void
read_field_line(struct jg_fetch *fetch, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    size_t value_start;
    size_t value_end = len;

    /* obs-fold: RFC 9112, section 5.2, lets a proxy replace it with a space. */
    if (is_ows(line[0])) {
        value_start = 0;
        while (value_start < len && is_ows(line[value_start]))
            value_start++;
        while (value_end > value_start && is_ows(line[value_end - 1]))
            value_end--;
        if (fetch->field_name != NULL && value_end > value_start)
            fetch->field_value = join_with(fetch->field_value, " ",
                                           line + value_start,
                                           value_end - value_start);
        return;
    }

    commit_field(fetch);
    if (colon == NULL || colon == line)
        return;

    value_start = (size_t)(colon - line) + 1;
    while (value_start < len && is_ows(line[value_start]))
        value_start++;
    while (value_end > value_start && is_ows(line[value_end - 1]))
        value_end--;

    fetch->field_name = jg_strndup(line, (size_t)(colon - line));
    fetch->field_value = jg_strndup(line + value_start,
                                    value_end - value_start);
}

/*
 * libcurl passes every header line of every response head here, 1xx heads
 * and chunked trailers included, each line whole and with its CRLF.
 */
static size_t
on_header_line(char *data, size_t size, size_t count, void *arg)
{
    struct jg_fetch *fetch = arg;
    size_t total = size * count;
    size_t len = total;

    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
        len--;

    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        start_response_head(fetch);
        fetch->head_bytes = total;
        return total;
    }

    /* Trailers come after the head, and the caller relays only the head. */
    if (fetch->head_complete)
        return total;

    fetch->head_bytes += total;
    if (fetch->head_bytes > MAX_HEAD_BYTES) {
        fetch->abort_error = JG_FETCH_PROTOCOL;
        fetch->abort_reason = "response head above 64 KiB";
        return 0;
    }

    if (len == 0) {
        commit_field(fetch);
        drop_connection_fields(fetch);
        fetch->head_complete = true;
        return total;
    }

    read_field_line(fetch, data, len);
    return total;
}

static size_t
on_body_data(char *data, size_t size, size_t count, void *arg)
{
    struct jg_fetch *fetch = arg;
    size_t len = size * count;
    size_t have = evbuffer_get_length(fetch->body);

    if (len > fetch->up->max_response_bytes - have) {
        fetch->abort_error = JG_FETCH_TOO_LARGE;
        fetch->abort_reason = "response body above max_passthrough_bytes";
        return 0;
    }
    if (evbuffer_add(fetch->body, data, len) != 0)
        out_of_memory("response body");
    return len;
}

/* ---- Completion -------------------------------------------------------- */

static enum jg_fetch_error
map_result(const struct jg_fetch *fetch, CURLcode result)
{
    switch (result) {
    case CURLE_OK:
        return JG_FETCH_OK;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    /* A TLS handshake that fails also leaves no connection to send on. */
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
        return JG_FETCH_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return JG_FETCH_TIMEOUT;
    case CURLE_WRITE_ERROR:
        /* Set when one of our callbacks refused data; else a local fault. */
        if (fetch->abort_error != JG_FETCH_OK)
            return fetch->abort_error;
        return JG_FETCH_PROTOCOL;
    default:
        return JG_FETCH_PROTOCOL;
    }
}

static void
fetch_free(struct jg_fetch *fetch)
{
    if (fetch->in_multi)
        curl_multi_remove_handle(fetch->up->multi, fetch->easy);
    curl_easy_cleanup(fetch->easy);
    curl_slist_free_all(fetch->request_headers);
    evhttp_clear_headers(&fetch->headers);
    evbuffer_free(fetch->body);
    discard_field(fetch);
    jg_free(fetch->connection_tokens);
    jg_free(fetch->request_body);
    jg_free(fetch->target);
    jg_free(fetch->method);
    jg_free(fetch);
}

static void
log_outcome(const struct jg_fetch *fetch, uint64_t elapsed_ms)
{
    if (fetch->error == JG_FETCH_OK) {
        jg_log_debug("upstream %s %.*s: status %ld in %" PRIu64 " ms",
                     fetch->method, path_len(fetch), fetch->target,
                     fetch->status, elapsed_ms);
        return;
    }
    jg_log_debug("upstream %s %.*s: failed (%s) after %" PRIu64 " ms: %s",
                 fetch->method, path_len(fetch), fetch->target,
                 jg_fetch_error_name(fetch->error), elapsed_ms,
                 fetch->error_text);
}

/*
 * Run the callbacks of finished fetches, oldest first. A callback may start
 * fetches (which run later) or cancel finished ones still on the list, so
 * the head is taken anew after each callback.
 */
static void
report_finished(struct jg_upstream *up)
{
    struct jg_fetch *fetch;

    while ((fetch = up->finished.head) != NULL) {
        struct jg_upstream_response response;

        list_remove(&up->finished, fetch);
        fetch->state = FETCH_REPORTING;
        JG_COUNT_SUB(up->active, 1);

        memset(&response, 0, sizeof(response));
        response.error = fetch->error;
        response.status = fetch->status;
        response.headers = &fetch->headers;
        response.body = fetch->body;
        response.error_text = fetch->error_text;
        response.elapsed_ms = fetch->finished_ms - fetch->started_ms;

        log_outcome(fetch, response.elapsed_ms);
        fetch->cb(&response, fetch->cb_arg);
        fetch_free(fetch);
    }
}

/* Move every transfer that libcurl reports as done to up->finished. */
static void
collect_finished(struct jg_upstream *up)
{
    CURLMsg *msg;
    int queued;

    while ((msg = curl_multi_info_read(up->multi, &queued)) != NULL) {
        struct jg_fetch *fetch;
        char *private_data = NULL;
        CURLcode result = msg->data.result;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &private_data);
        fetch = (struct jg_fetch *)private_data;

        fetch->finished_ms = jg_now_ms();
        fetch->error = map_result(fetch, result);
        if (fetch->error == JG_FETCH_OK)
            curl_easy_getinfo(fetch->easy, CURLINFO_RESPONSE_CODE,
                              &fetch->status);

        /* For an abort of ours, libcurl's own text is only "write error". */
        if (result == CURLE_WRITE_ERROR && fetch->abort_reason != NULL)
            snprintf(fetch->error_text, sizeof(fetch->error_text), "%s",
                     fetch->abort_reason);
        else if (result != CURLE_OK && fetch->error_text[0] == '\0')
            snprintf(fetch->error_text, sizeof(fetch->error_text), "%s",
                     curl_easy_strerror(result));

        /* msg is libcurl's memory and is invalid after this call. */
        curl_multi_remove_handle(up->multi, fetch->easy);
        fetch->in_multi = false;
        list_remove(&up->running, fetch);
        fetch->state = FETCH_FINISHED;
        list_append(&up->finished, fetch);
    }
}

static void
drive(struct jg_upstream *up, curl_socket_t fd, int flags)
{
    int running;
    CURLMcode rc;

    rc = curl_multi_socket_action(up->multi, fd, flags, &running);
    if (rc != CURLM_OK)
        jg_log_warn("upstream: curl_multi_socket_action failed: %s",
                    curl_multi_strerror(rc));

    collect_finished(up);
    report_finished(up);
}

/* ---- Events ------------------------------------------------------------ */

static void
on_socket_ready(evutil_socket_t fd, short what, void *arg)
{
    int flags = 0;

    if (what & EV_READ)
        flags |= CURL_CSELECT_IN;
    if (what & EV_WRITE)
        flags |= CURL_CSELECT_OUT;
    drive(arg, fd, flags);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    drive(arg, CURL_SOCKET_TIMEOUT, 0);
}

static void
on_report(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    report_finished(arg);
}

static void
watch_free(struct jg_upstream *up, struct sock_watch *watch)
{
    if (watch->prev != NULL)
        watch->prev->next = watch->next;
    else
        up->watches = watch->next;
    if (watch->next != NULL)
        watch->next->prev = watch->prev;
    event_free(watch->ev);
    jg_free(watch);
}

/*
 * CURLMOPT_SOCKETFUNCTION. libcurl forbids calls back into the multi handle
 * from here, except curl_multi_assign. The event's argument is up, not the
 * watch, because a socket action may free the watch of the very socket that
 * triggered it.
 */
static int
on_socket_change(CURL *easy, curl_socket_t fd, int what, void *arg,
                 void *socket_arg)
{
    struct jg_upstream *up = arg;
    struct sock_watch *watch = socket_arg;
    short events = EV_PERSIST;

    (void)easy;

    if (what == CURL_POLL_REMOVE) {
        if (watch != NULL)
            watch_free(up, watch);
        return 0;
    }

    if (watch == NULL) {
        watch = jg_calloc(1, sizeof(*watch));
        watch->ev = event_new(up->base, fd, 0, on_socket_ready, up);
        if (watch->ev == NULL)
            out_of_memory("socket event");
        watch->next = up->watches;
        if (up->watches != NULL)
            up->watches->prev = watch;
        up->watches = watch;
        curl_multi_assign(up->multi, fd, watch);
    }

    if (what & CURL_POLL_IN)
        events |= EV_READ;
    if (what & CURL_POLL_OUT)
        events |= EV_WRITE;

    /* event_assign is only allowed on an event that is not pending. */
    event_del(watch->ev);
    event_assign(watch->ev, up->base, fd, events, on_socket_ready, up);
    event_add(watch->ev, NULL);
    return 0;
}

/*
 * CURLMOPT_TIMERFUNCTION. -1 deletes the timer. Any other value, 0 included,
 * arms it, so that libcurl is called back from the loop and never from
 * inside this callback.
 */
static int
on_timer_change(CURLM *multi, long timeout_ms, void *arg)
{
    struct jg_upstream *up = arg;
    struct timeval tv;

    (void)multi;

    if (timeout_ms < 0) {
        evtimer_del(up->timer);
        return 0;
    }
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    evtimer_add(up->timer, &tv);
    return 0;
}

/* ---- Public interface -------------------------------------------------- */

struct jg_upstream *
jg_upstream_create(struct event_base *base,
                   const struct jg_upstream_options *opts)
{
    struct jg_upstream *up = jg_calloc(1, sizeof(*up));
    size_t url_len = strlen(opts->base_url);
    long max_connections = clamp_long(opts->max_connections);

    while (url_len > 0 && opts->base_url[url_len - 1] == '/')
        url_len--;

    up->base = base;
    up->base_url = jg_strndup(opts->base_url, url_len);
    up->timeout_ms = clamp_long(opts->timeout_ms);
    up->connect_timeout_ms = clamp_long(opts->connect_timeout_ms);
    up->max_response_bytes = opts->max_response_bytes;

    up->timer = evtimer_new(base, on_timer, up);
    up->report = event_new(base, -1, 0, on_report, up);
    up->multi = curl_multi_init();
    if (up->timer == NULL || up->report == NULL || up->multi == NULL)
        out_of_memory("upstream client");

    curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, on_socket_change);
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETDATA, up);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERDATA, up);

    /*
     * Transfers beyond the cap wait in libcurl's queue, and that wait counts
     * against their CURLOPT_TIMEOUT_MS. Idle connections up to the cap stay
     * open for reuse.
     */
    curl_multi_setopt(up->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                      max_connections);
    curl_multi_setopt(up->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      max_connections);
    curl_multi_setopt(up->multi, CURLMOPT_MAXCONNECTS, max_connections);
    curl_multi_setopt(up->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);

    jg_log_debug("upstream: client for %s, at most %ld connections",
                 up->base_url, max_connections);
    return up;
}

void
jg_upstream_abort_all(struct jg_upstream *up)
{
    struct jg_fetch *fetch;
    uint64_t now = jg_now_ms();

    while ((fetch = up->running.head) != NULL) {
        list_remove(&up->running, fetch);
        if (fetch->in_multi) {
            curl_multi_remove_handle(up->multi, fetch->easy);
            fetch->in_multi = false;
        }
        fetch->error = JG_FETCH_CANCELLED;
        fetch->finished_ms = now;
        snprintf(fetch->error_text, sizeof(fetch->error_text),
                 "aborted at shutdown");
        fetch->state = FETCH_FINISHED;
        list_append(&up->finished, fetch);
    }
    report_finished(up);
}

void
jg_upstream_free(struct jg_upstream *up)
{
    if (up == NULL)
        return;

    while (up->running.head != NULL)
        jg_upstream_cancel(up->running.head);
    while (up->finished.head != NULL)
        jg_upstream_cancel(up->finished.head);

    /*
     * Watches left now belong to pooled connections. They go while their
     * sockets are still open, and libcurl must not report on them after.
     */
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, NULL);
    while (up->watches != NULL)
        watch_free(up, up->watches);
    curl_multi_cleanup(up->multi);

    event_free(up->timer);
    event_free(up->report);
    jg_free(up->base_url);
    jg_free(up);
}

static bool
has_header(const struct curl_slist *list, const char *name)
{
    size_t name_len = strlen(name);

    for (; list != NULL; list = list->next) {
        const char *colon = strchr(list->data, ':');
        const char *semicolon = strchr(list->data, ';');
        const char *end = colon != NULL ? colon : semicolon;

        if (end != NULL && (size_t)(end - list->data) == name_len &&
            jg_ascii_casecmp_n(list->data, name_len, name) == 0)
            return true;
    }
    return false;
}

/*
 * Set the request method and body. libcurl adds Accept to every request and
 * Content-Type and Expect to one with a body, unless the list has an empty
 * "Name:" entry for the field. Those entries are added here, so that the
 * upstream gets only the fields the caller forwards.
 */
static void
set_method(struct jg_fetch *fetch, const char *method, const void *body,
           size_t body_len)
{
    CURL *easy = fetch->easy;
    bool is_get = strcmp(method, "GET") == 0;
    bool with_body = body_len > 0 || strcmp(method, "POST") == 0 ||
                     strcmp(method, "PUT") == 0 ||
                     strcmp(method, "PATCH") == 0;

    if (!has_header(fetch->request_headers, "Accept"))
        fetch->request_headers =
            curl_slist_append(fetch->request_headers, "Accept:");
    fetch->request_headers = curl_slist_append(fetch->request_headers,
                                               "Expect:");

    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
    } else if (with_body) {
        fetch->request_body = jg_malloc(body_len);
        if (body_len > 0)
            memcpy(fetch->request_body, body, body_len);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)body_len);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, fetch->request_body);
        if (!has_header(fetch->request_headers, "Content-Type"))
            fetch->request_headers =
                curl_slist_append(fetch->request_headers, "Content-Type:");
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
        /*
         * libcurl resends a request whose reused connection turned out to
         * be closed. For a method that is not idempotent the upstream may
         * have acted on the first copy already, so such requests get a
         * connection of their own.
         */
        if (strcmp(method, "POST") == 0 || strcmp(method, "PATCH") == 0)
            curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
    } else if (!is_get) {
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
    }

    if (fetch->request_headers == NULL)
        out_of_memory("request header list");
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, fetch->request_headers);
}

/* Returns the first option that libcurl rejected, or CURLE_OK. */
static CURLcode
set_transfer_options(struct jg_fetch *fetch, const char *url)
{
    struct jg_upstream *up = fetch->up;
    CURL *easy = fetch->easy;
    CURLcode rc;

    curl_easy_setopt(easy, CURLOPT_PRIVATE, fetch);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, fetch->error_text);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header_line);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, fetch);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body_data);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, fetch);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, up->timeout_ms);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, up->connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);

    /* Redirects go back to the client, and bodies keep their encoding. */
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(easy, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    /* The target reaches the upstream as the client sent it: no dot removal. */
    curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L);

    /* libcurl copies string options, CURLOPT_POSTFIELDS excepted. */
    rc = curl_easy_setopt(easy, CURLOPT_URL, url);
    if (rc != CURLE_OK)
        return rc;
    rc = curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    if (rc != CURLE_OK)
        return rc;
    /* HTTP/2 only where TLS ALPN offers it; cleartext stays HTTP/1.1. */
    return curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                            (long)CURL_HTTP_VERSION_2TLS);
}

/* Report a fetch that could not start from the loop, not from the caller. */
static void
fail_soon(struct jg_fetch *fetch, const char *reason)
{
    struct jg_upstream *up = fetch->up;

    snprintf(fetch->error_text, sizeof(fetch->error_text), "%s", reason);
    fetch->error = JG_FETCH_PROTOCOL;
    fetch->finished_ms = jg_now_ms();
    fetch->state = FETCH_FINISHED;
    list_append(&up->finished, fetch);
    event_active(up->report, EV_TIMEOUT, 1);
}

struct jg_fetch *
jg_upstream_fetch(struct jg_upstream *up, const char *method,
                  const char *target, struct curl_slist *headers,
                  const void *body, size_t body_len, jg_fetch_cb cb,
                  void *arg)
{
    struct jg_fetch *fetch = jg_calloc(1, sizeof(*fetch));
    size_t base_len = strlen(up->base_url);
    size_t target_len = strlen(target);
    char *url;
    CURLcode rc;
    CURLMcode mrc;

    fetch->up = up;
    fetch->method = jg_strdup(method != NULL ? method : "GET");
    fetch->target = jg_strdup(target);
    fetch->request_headers = headers;
    fetch->cb = cb;
    fetch->cb_arg = arg;
    fetch->started_ms = jg_now_ms();
    fetch->body = evbuffer_new();
    fetch->easy = curl_easy_init();
    if (fetch->body == NULL || fetch->easy == NULL)
        out_of_memory("upstream fetch");
    TAILQ_INIT(&fetch->headers);
    JG_COUNT(up->active);

    jg_log_debug("upstream %s %.*s: start", fetch->method, path_len(fetch),
                 fetch->target);

    /* Without the slash, "@host" in a target would replace the upstream host. */
    if (target[0] != '/') {
        fail_soon(fetch, "request target does not begin with '/'");
        return fetch;
    }

    url = jg_malloc(base_len + target_len + 1);
    memcpy(url, up->base_url, base_len);
    memcpy(url + base_len, target, target_len + 1);

    set_method(fetch, fetch->method, body, body_len);
    rc = set_transfer_options(fetch, url);
    jg_free(url);
    if (rc != CURLE_OK) {
        fail_soon(fetch, curl_easy_strerror(rc));
        return fetch;
    }

    /* Arms the timer at 0 ms: the transfer begins on the next loop turn. */
    mrc = curl_multi_add_handle(up->multi, fetch->easy);
    if (mrc != CURLM_OK) {
        fail_soon(fetch, curl_multi_strerror(mrc));
        return fetch;
    }
    fetch->in_multi = true;
    fetch->state = FETCH_RUNNING;
    list_append(&up->running, fetch);
    return fetch;
}

void
jg_upstream_cancel(struct jg_fetch *fetch)
{
    struct jg_upstream *up = fetch->up;

    switch (fetch->state) {
    case FETCH_RUNNING:
        list_remove(&up->running, fetch);
        break;
    case FETCH_FINISHED:
        list_remove(&up->finished, fetch);
        break;
    case FETCH_REPORTING:
        /* Its own callback is running; the fetch is freed when it returns. */
        return;
    }

    JG_COUNT_SUB(up->active, 1);
    jg_log_debug("upstream %s %.*s: cancelled after %" PRIu64 " ms",
                 fetch->method, path_len(fetch), fetch->target,
                 jg_now_ms() - fetch->started_ms);
    fetch_free(fetch);
}

size_t
jg_upstream_active(const struct jg_upstream *up)
{
    /* The metrics page of another worker thread may ask. */
    return __atomic_load_n(&up->active, __ATOMIC_RELAXED);
}

const char *
jg_fetch_error_name(enum jg_fetch_error error)
{
    switch (error) {
    case JG_FETCH_OK:
        return "ok";
    case JG_FETCH_CONNECT:
        return "connect";
    case JG_FETCH_TIMEOUT:
        return "timeout";
    case JG_FETCH_TOO_LARGE:
        return "too-large";
    case JG_FETCH_PROTOCOL:
        return "protocol";
    case JG_FETCH_CANCELLED:
        return "cancelled";
    }
    return "unknown";
}
