/*
 * The admin listener: GET /healthz, GET /readyz, GET /metrics in the
 * Prometheus text format, and DELETE /cache/jobs/{job_id} and
 * DELETE /cache/orgs/{org_id} to purge entries. It runs on worker 0's
 * event loop, shows the sums of every worker's counters, and must only be
 * reachable by operators.
 */
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
#include "jobgate/jg_uuid.h"

static void
reply_text(struct evhttp_request *req, int status, const char *ctype,
           struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      ctype);
    evhttp_send_reply(req, status, jg_status_reason(status), body);
}

static void
metric(struct evbuffer *out, const char *name, const char *help,
       const char *type, uint64_t value)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name,
                        help, name, type, name, (unsigned long long)value);
}

static void
render_metrics(struct jg_server *srv, struct evbuffer *out)
{
    struct jg_metrics metrics = {0};
    struct jg_cache_stats cache_stats = {0};
    struct jg_http_stats http_stats = {0};
    struct jg_principal_stats principal_stats = {0};
    const struct jg_metrics *m = &metrics;
    const struct jg_cache_stats *cs = &cache_stats;
    const struct jg_http_stats *hs = &http_stats;
    const struct jg_principal_stats *ps = &principal_stats;
    uint64_t connections;
    uint64_t upstream_active;
    size_t i;

    jg_server_sum_stats(srv, &metrics, &cache_stats, &http_stats,
                        &connections, &upstream_active);
    jg_counters_add((uint64_t *)&principal_stats,
                    (const uint64_t *)jg_principals_stats(srv->principals),
                    sizeof(principal_stats) / sizeof(uint64_t));

    metric(out, "jobgate_requests_total", "Requests on the proxy port.",
           "counter", m->requests);
    metric(out, "jobgate_job_requests_total", "Valid job route requests.",
           "counter", m->requests_job);
    metric(out, "jobgate_passthrough_requests_total",
           "Requests passed through uncached.", "counter",
           m->requests_passthrough);
    metric(out, "jobgate_invalid_requests_total",
           "Requests answered locally with a 4xx.", "counter",
           m->requests_invalid);
    metric(out, "jobgate_cache_hits_total", "Job requests served from cache.",
           "counter", m->cache_hits);
    metric(out, "jobgate_cache_misses_total", "Job requests sent upstream.",
           "counter", m->cache_misses);
    metric(out, "jobgate_not_modified_total", "Hits answered with 304.",
           "counter", m->not_modified);
    metric(out, "jobgate_unproven_misses_total",
           "Misses because the credential was not proven.", "counter",
           m->unproven_misses);
    metric(out, "jobgate_only_if_cached_misses_total",
           "only-if-cached requests answered 504.", "counter",
           m->only_if_cached_misses);
    metric(out, "jobgate_stored_total", "Terminal answers queued for cache.",
           "counter", m->stored);
    metric(out, "jobgate_not_stored_total", "200 answers not cacheable.",
           "counter", m->not_stored);
    metric(out, "jobgate_upstream_requests_total", "Upstream requests sent.",
           "counter", m->upstream_requests);
    metric(out, "jobgate_upstream_errors_total",
           "Upstream requests that got no HTTP answer.", "counter",
           m->upstream_errors);
    metric(out, "jobgate_upstream_timeouts_total", "Upstream timeouts.",
           "counter", m->upstream_timeouts);
    metric(out, "jobgate_upstream_active", "Upstream requests in flight.",
           "gauge", upstream_active);
    metric(out, "jobgate_coalesced_total",
           "Misses that joined an upstream request in flight.", "counter",
           m->coalesced);
    metric(out, "jobgate_coalesce_full_total",
           "Misses that fetched alone because max_waiters was reached.",
           "counter", m->coalesce_full);
    metric(out, "jobgate_refetched_total",
           "Waiters that could not share an answer and fetched again.",
           "counter", m->refetched);
    metric(out, "jobgate_connections_accepted_total", "Client connections.",
           "counter", hs->connections_accepted);
    metric(out, "jobgate_connections_rejected_total",
           "Connections closed because max_connections was reached.",
           "counter", hs->connections_rejected);
    metric(out, "jobgate_connections", "Open client connections.", "gauge",
           connections);
    metric(out, "jobgate_header_timeouts_total",
           "Connections closed by the request read deadline.", "counter",
           hs->request_timeouts);
    metric(out, "jobgate_bad_requests_total",
           "Requests the HTTP parser rejected with a 4xx or 505.", "counter",
           hs->bad_requests);
    evbuffer_add_printf(out, "# HELP jobgate_responses_total Answers by "
                        "status class.\n# TYPE jobgate_responses_total "
                        "counter\n");
    for (i = 1; i < JG_ARRAY_LEN(m->responses); i++)
        evbuffer_add_printf(out, "jobgate_responses_total{class=\"%zuxx\"} "
                            "%llu\n", i,
                            (unsigned long long)m->responses[i]);

    evbuffer_add_printf(out, "# HELP jobgate_worker_requests_total Requests "
                        "on the proxy port by worker.\n# TYPE "
                        "jobgate_worker_requests_total counter\n");
    for (i = 0; i < srv->shared->worker_count; i++)
        evbuffer_add_printf(
            out, "jobgate_worker_requests_total{worker=\"%zu\"} %llu\n", i,
            (unsigned long long)__atomic_load_n(
                &srv->shared->workers[i]->metrics.requests,
                __ATOMIC_RELAXED));

    metric(out, "jobgate_cache_lookup_hits_total", "LMDB lookups that hit.",
           "counter", cs->hits);
    metric(out, "jobgate_cache_expired_total", "Entries found expired.",
           "counter", cs->expired);
    metric(out, "jobgate_cache_corrupt_total",
           "Entries that failed their checksum or version.", "counter",
           cs->corrupt);
    metric(out, "jobgate_cache_writes_total", "Entries committed.", "counter",
           cs->writes);
    metric(out, "jobgate_cache_write_errors_total", "Failed commits.",
           "counter", cs->write_errors);
    metric(out, "jobgate_cache_write_dropped_total",
           "Entries dropped because the map was full.", "counter",
           cs->dropped_map_full);
    metric(out, "jobgate_cache_evicted_total", "Entries evicted for room.",
           "counter", cs->evicted);
    metric(out, "jobgate_cache_entries", "Entries stored.", "gauge",
           jg_cache_entries(srv->cache));
    metric(out, "jobgate_cache_used_bytes", "Bytes of the map in use.",
           "gauge", jg_cache_used_bytes(srv->cache));
    metric(out, "jobgate_principals", "Credentials with a proof.", "gauge",
           ps->entries);
    metric(out, "jobgate_principals_forgotten_total",
           "Credentials forgotten after an upstream 401.", "counter",
           ps->forgotten);
    metric(out, "jobgate_principals_evicted_total",
           "Credentials dropped because the table was full.", "counter",
           ps->evicted);
}

static void
purge(struct jg_server *srv, struct evhttp_request *req, const char *path)
{
    struct evbuffer *body = evbuffer_new();
    uint8_t id[JG_UUID_LEN];
    const char *seg;
    bool by_job;
    long removed;
    size_t i;

    if (strncmp(path, "/cache/jobs/", 12) == 0) {
        seg = path + 12;
        by_job = true;
    } else {
        seg = path + 12; /* "/cache/orgs/" has the same length */
        by_job = false;
    }
    if (jg_uuid_parse_segment(seg, strlen(seg), id) == JG_UUID_INVALID) {
        evbuffer_add_printf(body, "{\"detail\":\"invalid id\"}");
        reply_text(req, 422, "application/json", body);
        evbuffer_free(body);
        return;
    }

    /*
     * Nothing of the scope may be stored again behind the purge: kept
     * answers stop being handed out, the other workers' queued writes are
     * dropped (after a commit in progress), and worker 0's go first so that
     * the purge removes them.
     */
    jg_request_drop_kept(srv, id, !by_job);
    for (i = 1; i < srv->shared->worker_count; i++)
        jg_cache_drop_pending(srv->shared->workers[i]->cache, id, !by_job);
    jg_cache_flush(srv->cache);
    removed = by_job ? jg_cache_purge_job(srv->cache, id)
                     : jg_cache_purge_org(srv->cache, id);
    if (removed < 0) {
        evbuffer_add_printf(body, "{\"detail\":\"purge failed\"}");
        reply_text(req, 500, "application/json", body);
    } else {
        jg_log_info("admin purge of %s %s removed %ld entries",
                    by_job ? "job" : "org", seg, removed);
        evbuffer_add_printf(body, "{\"purged\":%ld}", removed);
        reply_text(req, 200, "application/json", body);
    }
    evbuffer_free(body);
}

static void
admin_handle(struct evhttp_request *req, void *arg)
{
    struct jg_server *srv = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *body = evbuffer_new();
    char path[256];

    snprintf(path, sizeof(path), "%.*s", (int)strcspn(uri, "?"), uri);

    if (cmd == EVHTTP_REQ_GET && strcmp(path, "/healthz") == 0) {
        evbuffer_add_printf(body, "ok\n");
        reply_text(req, 200, "text/plain", body);
    } else if (cmd == EVHTTP_REQ_GET && strcmp(path, "/readyz") == 0) {
        evbuffer_add_printf(body, srv->draining ? "draining\n" : "ready\n");
        reply_text(req, srv->draining ? 503 : 200, "text/plain", body);
    } else if (cmd == EVHTTP_REQ_GET && strcmp(path, "/metrics") == 0) {
        render_metrics(srv, body);
        reply_text(req, 200, "text/plain; version=0.0.4", body);
    } else if (cmd == EVHTTP_REQ_DELETE &&
               (strncmp(path, "/cache/jobs/", 12) == 0 ||
                strncmp(path, "/cache/orgs/", 12) == 0)) {
        purge(srv, req, path);
    } else {
        evbuffer_add_printf(body, "{\"detail\":\"not found\"}");
        reply_text(req, 404, "application/json", body);
    }
    evbuffer_free(body);
}

int
jg_admin_init(struct jg_server *srv)
{
    int fd;

    srv->admin = evhttp_new(srv->base);
    evhttp_set_max_headers_size(srv->admin, 8192);
    evhttp_set_max_body_size(srv->admin, 0);
    evhttp_set_timeout(srv->admin, 10);
    evhttp_set_allowed_methods(srv->admin, EVHTTP_REQ_GET | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(srv->admin, admin_handle, srv);

    fd = jg_server_bind(srv->cfg.admin_listen, "admin listening");
    if (fd < 0)
        return -1;
    if (evhttp_accept_socket_with_handle(srv->admin, fd) == NULL) {
        jg_log_error("cannot serve the admin port %s", srv->cfg.admin_listen);
        close(fd);
        return -1;
    }
    return 0;
}
