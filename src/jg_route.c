/*
 * Matching of the cached routes. Kept apart from the request handling so
 * that the fuzz targets can reach it without the server around it.
 */
#include "jobgate/jg_route.h"

#include <string.h>

#include "jobgate/jg_util.h"

const char *
jg_route_match(const char *target, const char **segment, size_t *len)
{
    static const struct {
        const char *prefix;
        const char *name;
    } routes[] = {
        {"/v2/org-jobs/", "job"},
        {"/public/v2/org-jobs/", "public-job"},
    };
    size_t path_len = strcspn(target, "?");
    size_t i;

    for (i = 0; i < JG_ARRAY_LEN(routes); i++) {
        size_t prefix_len = strlen(routes[i].prefix);
        const char *rest = target + prefix_len;
        size_t rest_len;

        if (path_len <= prefix_len ||
            strncmp(target, routes[i].prefix, prefix_len) != 0)
            continue;
        rest_len = path_len - prefix_len;
        if (memchr(rest, '/', rest_len) != NULL)
            return NULL;
        *segment = rest;
        *len = rest_len;
        return routes[i].name;
    }
    return NULL;
}
