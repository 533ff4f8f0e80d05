/*
 * The pass-through path and the header rules shared with the job route.
 *
 * Every request that is not a cached-route GET goes to the upstream as it
 * came (method, target, end-to-end headers, body) and its answer comes back
 * the same way, never cached, because SDKs point their whole base URL at
 * jobgate and also call login, health and other endpoints through it.
 */
#include <sys/queue.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "jobgate/jg_http.h"
#include "jobgate/jg_log.h"
#include "jobgate/jg_request.h"
#include "jobgate/jg_server.h"
#include "jobgate/jg_upstream.h"
#include "jobgate/jg_util.h"

/* Headers that describe one connection or its framing and never pass. */
static const char *const hop_by_hop[] = {
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
    "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
    "Host", "Content-Length", "Expect",
};

/* Headers the job route forwards; the rest of the client's are dropped. */
static const char *const job_allowlist[] = {
    "Galileo-API-Key", "Splunk-AO-API-Key", "Authorization", "Accept",
    "User-Agent", "X-Galileo-SDK", "X-Request-Id", "X-Correlation-Id",
    "traceparent", "tracestate", "baggage", "X-B3-TraceId", "X-B3-SpanId",
    "X-B3-ParentSpanId", "X-B3-Sampled", "X-Amzn-Trace-Id",
};

static int
name_in(const char *name, const char *const *list, size_t count)
{
    size_t i;

    for (i = 0; i < count; i++) {
        if (strcasecmp(name, list[i]) == 0)
            return 1;
    }
    return 0;
}

static bool
is_credential_header(const char *name)
{
    return strcasecmp(name, "Galileo-API-Key") == 0 ||
           strcasecmp(name, "Splunk-AO-API-Key") == 0 ||
           strcasecmp(name, "Authorization") == 0;
}

struct curl_slist *
jg_forward_headers(const struct jg_http_request *req, int allowlist,
                   const char *credential_header)
{
    const struct jg_http_field *fields = jg_http_fields(req);
    size_t count = jg_http_field_count(req);
    struct curl_slist *list = NULL;
    size_t i;

    for (i = 0; i < count; i++) {
        const struct jg_http_field *h = &fields[i];
        size_t size = strlen(h->name) + strlen(h->value) + 3;
        char *line;

        if (name_in(h->name, hop_by_hop, JG_ARRAY_LEN(hop_by_hop)))
            continue;
        if (jg_http_connection_lists(req, h->name))
            continue;
        if (allowlist &&
            !name_in(h->name, job_allowlist, JG_ARRAY_LEN(job_allowlist)))
            continue;
        /*
         * The job route sends exactly the credential it hashed, so the
         * upstream's verdict is about that credential and no other.
         */
        if (allowlist && is_credential_header(h->name) &&
            (credential_header == NULL ||
             strcasecmp(h->name, credential_header) != 0))
            continue;

        /* "Name;" is libcurl's spelling of a header with an empty value. */
        line = jg_malloc(size);
        if (h->value[0] == '\0')
            snprintf(line, size, "%s;", h->name);
        else
            snprintf(line, size, "%s: %s", h->name, h->value);
        list = curl_slist_append(list, line);
        jg_free(line);
    }

    /*
     * libcurl adds an Accept field when the client sent none; an empty
     * value keeps the request as the client made it.
     */
    if (jg_http_find(req, "Accept") == NULL)
        list = curl_slist_append(list, "Accept:");
    return list;
}

/* jobgate writes these itself on every answer. */
static const char *const own_fields[] = {"Date", "Cache-Status"};

void
jg_copy_response_headers(const struct evkeyvalq *from,
                         struct jg_http_request *to)
{
    const struct evkeyval *h;

    TAILQ_FOREACH(h, from, next) {
        if (name_in(h->key, hop_by_hop, JG_ARRAY_LEN(hop_by_hop)) ||
            name_in(h->key, own_fields, JG_ARRAY_LEN(own_fields)))
            continue;
        jg_http_add_header(to, h->key, h->value);
    }
}

const char *
jg_status_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
    }
}

void
jg_reply_detail(struct jg_server *srv, struct jg_http_request *req,
                int status, const char *message)
{
    char body[256];
    int len;

    /* Messages are fixed strings of ours: nothing in them needs escaping. */
    len = snprintf(body, sizeof(body), "{\"detail\":\"%s\"}", message);
    jg_http_add_header(req, "Content-Type", "application/json");
    jg_server_reply(srv, req, status, body, (size_t)len);
}

void
jg_access_log(const char *route, const char *method, int status,
              const char *cache, long upstream_ms, uint64_t total_ms,
              const char *fingerprint, const char *target)
{
    char upstream[24];
    size_t path_len = strcspn(target, "?");

    if (!jg_log_enabled(JG_LOG_INFO))
        return;
    if (upstream_ms < 0)
        snprintf(upstream, sizeof(upstream), "-");
    else
        snprintf(upstream, sizeof(upstream), "%ld", upstream_ms);

    /* The query may hold secrets and is left out; the path is cut. */
    jg_log_info("access route=%s method=%s status=%d cache=%s upstream_ms=%s "
                "total_ms=%llu cred=%s path=%.*s",
                route, method, status, cache, upstream,
                (unsigned long long)total_ms,
                fingerprint != NULL ? fingerprint : "-",
                (int)(path_len < 200 ? path_len : 200), target);
}

/* One pass-through exchange, alive from request to answer. */
struct passthrough {
    struct jg_server *srv;
    struct jg_http_request *req;
    char method[16];
    char *path;
    uint64_t started_ms;
};

static void
passthrough_done(const struct jg_upstream_response *resp, void *arg)
{
    struct passthrough *pt = arg;
    struct jg_server *srv = pt->srv;
    struct jg_http_request *req = pt->req;
    int status;

    if (resp->error != JG_FETCH_OK) {
        status = resp->error == JG_FETCH_TIMEOUT     ? 504
                 : resp->error == JG_FETCH_CANCELLED ? 503
                                                     : 502;
        if (resp->error == JG_FETCH_TIMEOUT)
            JG_COUNT(srv->metrics.upstream_timeouts);
        else
            JG_COUNT(srv->metrics.upstream_errors);
        jg_log_warn("upstream %s %s failed: %s (%s)", pt->method, pt->path,
                    jg_fetch_error_name(resp->error), resp->error_text);
        jg_http_add_header(req, "Cache-Status", "jobgate; fwd=bypass");
        jg_reply_detail(srv, req, status,
                        status == 504   ? "upstream timed out"
                        : status == 503 ? "shutting down"
                                        : "upstream request failed");
    } else {
        status = (int)resp->status;
        jg_copy_response_headers(resp->headers, req);
        jg_http_add_header(req, "Cache-Status", "jobgate; fwd=bypass");
        jg_server_reply_buffer(srv, req, status, resp->body);
    }

    jg_access_log("passthrough", pt->method, status, "bypass",
                  (long)resp->elapsed_ms, jg_now_ms() - pt->started_ms, NULL,
                  pt->path);
    jg_free(pt->path);
    jg_free(pt);
    jg_server_request_done(srv);
}

void
jg_passthrough_start(struct jg_server *srv, struct jg_http_request *req,
                     const char *target, uint64_t started_ms)
{
    const char *method = jg_http_method_name(req);
    struct passthrough *pt;
    struct curl_slist *headers;
    size_t body_len;
    const void *body = jg_http_body(req, &body_len);

    /* Methods outside the set the upstream serves are not relayed. */
    if (jg_http_method(req) == JG_HTTP_OTHER) {
        /* Logged first: the method and target end with the reply. */
        jg_access_log("passthrough", method, 405, "none", -1,
                      jg_now_ms() - started_ms, NULL, target);
        jg_reply_detail(srv, req, 405, "method not allowed");
        jg_server_request_done(srv);
        return;
    }

    pt = jg_calloc(1, sizeof(*pt));
    pt->srv = srv;
    pt->req = req;
    snprintf(pt->method, sizeof(pt->method), "%s", method);
    pt->path = jg_strndup(target, strcspn(target, "?"));
    pt->started_ms = started_ms;

    headers = jg_forward_headers(req, 0, NULL);

    JG_COUNT(srv->metrics.upstream_requests);
    jg_upstream_fetch(srv->upstream, method, target, headers, body, body_len,
                      passthrough_done, pt);
}
