/*
 * Inspection of an upstream job body with jsmn, in place and without
 * copying it, to decide whether the answer may be cached and which
 * organization it proves the caller may read.
 */
#ifndef JOBGATE_JG_INSPECT_H
#define JOBGATE_JG_INSPECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobgate/jg_uuid.h"

#define JG_MAX_STATUSES 16
#define JG_MAX_STATUS_LEN 32

/* The set of job statuses that never change again. */
struct jg_status_set {
    size_t count;
    char names[JG_MAX_STATUSES][JG_MAX_STATUS_LEN];
};

enum jg_inspect_verdict {
    JG_INSPECT_CACHEABLE = 0,
    JG_INSPECT_NOT_TERMINAL,   /* well formed, status may still change */
    JG_INSPECT_TOO_LARGE,      /* body above max_body_bytes */
    JG_INSPECT_NOT_JSON,       /* jsmn failed, or the body was incomplete */
    JG_INSPECT_NOT_OBJECT,     /* the top-level value is not an object */
    JG_INSPECT_TRAILING_DATA,  /* more than whitespace after the object */
    JG_INSPECT_DUPLICATE_FIELD,/* id, organization_id or status twice */
    JG_INSPECT_MISSING_FIELD,  /* id, organization_id or status absent */
    JG_INSPECT_BAD_FIELD,      /* one of the three is not a usable string */
    JG_INSPECT_ID_MISMATCH,    /* top-level id is not the requested job */
};

struct jg_inspect_result {
    enum jg_inspect_verdict verdict;
    /*
     * True when the body is one complete object whose id is the requested
     * job and whose organization_id is a UUID; org then holds it. This holds
     * for running jobs too, since any such 200 proves the credential's
     * access to that organization.
     */
    bool org_valid;
    uint8_t org[JG_UUID_LEN];
};

/*
 * Inspect body[0..len) for the requested job. Only members of the top-level
 * object count; escapes in the three fields are decoded before comparing.
 * The body is not modified and need not be NUL-terminated.
 */
enum jg_inspect_verdict jg_inspect_body(const char *body, size_t len,
                                        const uint8_t job[JG_UUID_LEN],
                                        const struct jg_status_set *terminal,
                                        size_t max_body_bytes,
                                        struct jg_inspect_result *out);

const char *jg_inspect_verdict_name(enum jg_inspect_verdict verdict);

/*
 * Parse a comma-separated list of statuses ("completed, failed") into set.
 * Returns 0, or -1 when a name is empty, longer than JG_MAX_STATUS_LEN - 1,
 * or the list has more than JG_MAX_STATUSES names.
 */
int jg_status_set_parse(struct jg_status_set *set, const char *list);
bool jg_status_set_contains(const struct jg_status_set *set, const char *name,
                            size_t len);

#endif
