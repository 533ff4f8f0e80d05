/*
 * The cached routes of the proxy port: GET /v2/org-jobs/{job_id} and its
 * alias /public/v2/org-jobs/{job_id}. Every other target is passed through.
 */
#ifndef JOBGATE_JG_ROUTE_H
#define JOBGATE_JG_ROUTE_H

#include <stddef.h>

/*
 * Match a request target (path and optional query, NUL-terminated). On a
 * match, *segment and *len give the raw, still percent-encoded job id
 * segment inside target, and the route's name ("job" or "public-job") is
 * returned. A target with an empty segment, a trailing slash or a deeper
 * path is no match, because the upstream serves those as other resources.
 */
const char *jg_route_match(const char *target, const char **segment,
                           size_t *len);

#endif
