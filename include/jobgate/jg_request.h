/*
 * Request handling for the proxy port: routing, the cached job route with
 * its miss state machine and shared fetches, and the pass-through of every
 * other request.
 */
#ifndef JOBGATE_JG_REQUEST_H
#define JOBGATE_JG_REQUEST_H

#include <stddef.h>

struct evhttp_request;
struct evkeyvalq;
struct curl_slist;
struct jg_server;

/* evhttp's generic callback for the proxy port. */
void jg_request_handle(struct evhttp_request *req, void *arg);

/* Forward req unchanged to the upstream and relay the answer. */
void jg_passthrough_start(struct jg_server *srv, struct evhttp_request *req,
                          const char *target, uint64_t started_ms);

/*
 * Build the upstream header list from the client's headers. With allowlist
 * set, only Accept, User-Agent, SDK, request id and trace headers pass,
 * plus the one credential header named by credential_header (NULL: none);
 * otherwise every end-to-end header does. Hop-by-hop headers, Host,
 * Content-Length and Expect never pass. The list is owned by the caller.
 */
struct curl_slist *jg_forward_headers(const struct evkeyvalq *in,
                                      int allowlist,
                                      const char *credential_header);

/* A header's value, unless it is absent or listed in Connection. */
const char *jg_find_end_to_end_header(const struct evkeyvalq *in,
                                      const char *name);

/* Copy upstream response headers into a reply, skipping framing headers. */
void jg_copy_response_headers(const struct evkeyvalq *from,
                              struct evkeyvalq *to);

/* Send a JSON {"detail": message} answer. */
void jg_reply_detail(struct jg_server *srv, struct evhttp_request *req,
                     int status, const char *message);

/* The reason phrase of an HTTP status code. */
const char *jg_status_reason(int status);

/* Access log line. */
void jg_access_log(const char *route, const char *method, int status,
                   const char *cache, long upstream_ms, uint64_t total_ms,
                   const char *fingerprint, const char *path);

#endif
