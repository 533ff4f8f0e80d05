/*
 * Request handling for the proxy port: routing, the cached job route with
 * its miss state machine and shared fetches, and the pass-through of every
 * other request.
 */
#ifndef JOBGATE_JG_REQUEST_H
#define JOBGATE_JG_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evkeyvalq;
struct jg_http_request;
struct curl_slist;
struct jg_server;

/* The HTTP server's handler for every request on the proxy port. */
void jg_request_handle(struct jg_http_request *req, void *arg);

/*
 * End the flights of this worker whose answers were queued for the cache,
 * once the batch is committed: from now on a lookup finds the entry.
 */
void jg_request_settle(struct jg_server *srv);

/*
 * Stop handing out the answers kept for one job, or for the jobs of one
 * organization (by_org), as a purge of the cache must.
 */
void jg_request_drop_kept(struct jg_server *srv, const uint8_t id[16],
                          bool by_org);

/* Forward req unchanged to the upstream and relay the answer. */
void jg_passthrough_start(struct jg_server *srv, struct jg_http_request *req,
                          const char *target, uint64_t started_ms);

/*
 * Build the upstream header list from the client's headers. With allowlist
 * set, only Accept, User-Agent, SDK, request id and trace headers pass,
 * plus the one credential header named by credential_header (NULL: none);
 * otherwise every end-to-end header does. Hop-by-hop headers, Host,
 * Content-Length and Expect never pass. The list is owned by the caller.
 */
struct curl_slist *jg_forward_headers(const struct jg_http_request *req,
                                      int allowlist,
                                      const char *credential_header);

/*
 * Copy upstream response headers into a reply, skipping framing headers
 * and the ones jobgate writes itself (Date, Cache-Status).
 */
void jg_copy_response_headers(const struct evkeyvalq *from,
                              struct jg_http_request *to);

/* Send a JSON {"detail": message} answer. */
void jg_reply_detail(struct jg_server *srv, struct jg_http_request *req,
                     int status, const char *message);

/* The reason phrase of an HTTP status code. */
const char *jg_status_reason(int status);

/*
 * Write the access log line of a request. target is the request target;
 * the line shows its path, without the query, cut at 200 bytes.
 */
void jg_access_log(const char *route, const char *method, int status,
                   const char *cache, long upstream_ms, uint64_t total_ms,
                   const char *fingerprint, const char *target);

#endif
