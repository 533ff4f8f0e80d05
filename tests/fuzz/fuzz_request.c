/*
 * Fuzz target for what jobgate reads from a request head besides framing:
 * the job id segment of the cached routes and the credential headers. The
 * input is a raw HTTP request head (request line, header lines, each ended
 * by LF or CRLF). It is split here with a small parser of its own, then the
 * target goes to jg_route_match(), a matched job id segment to
 * jg_uuid_parse_segment(), and the first Galileo-API-Key, Splunk-AO-API-Key
 * and Authorization values to jg_credential_extract().
 *
 * NOTE: the server's head parser is not reached here; fuzz_http covers it.
 * Header values are passed with the blanks that parser would strip, which
 * only makes the credential parser's input harder.
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "jobgate/jg_principal.h"
#include "jobgate/jg_route.h"
#include "jobgate/jg_util.h"
#include "jobgate/jg_uuid.h"

static const char *const routes[] = {
    "/v2/org-jobs/",
    "/public/v2/org-jobs/",
};

enum header {
    HEADER_GALILEO = 0,
    HEADER_SPLUNK,
    HEADER_AUTHORIZATION,
    HEADER_COUNT,
};

static const char *const header_names[HEADER_COUNT] = {
    "Galileo-API-Key",
    "Splunk-AO-API-Key",
    "Authorization",
};

/* The parts of a head this target uses; values are owned, NUL-terminated. */
struct head {
    const char *target;
    size_t target_len;
    char *values[HEADER_COUNT];
};

/* The next line of data[*pos..size), without its LF or CRLF. */
static bool
next_line(const char *data, size_t size, size_t *pos, const char **line,
          size_t *len)
{
    const char *start = data + *pos;
    const char *lf;
    size_t n;

    if (*pos >= size)
        return false;
    lf = memchr(start, '\n', size - *pos);
    n = lf != NULL ? (size_t)(lf - start) : size - *pos;
    *pos += n + (lf != NULL ? 1 : 0);
    if (n > 0 && start[n - 1] == '\r')
        n--;
    *line = start;
    *len = n;
    return true;
}

/* The request target: the text between the first and second space. */
static void
parse_request_line(const char *line, size_t len, struct head *h)
{
    const char *sp = memchr(line, ' ', len);
    const char *end;

    if (sp == NULL)
        return;
    h->target = sp + 1;
    end = memchr(h->target, ' ', len - (size_t)(h->target - line));
    h->target_len = end != NULL ? (size_t)(end - h->target)
                                : len - (size_t)(h->target - line);
}

/* Keep the value of a credential header line; the first one of each wins. */
static void
parse_header_line(const char *line, size_t len, struct head *h)
{
    const char *colon = memchr(line, ':', len);
    size_t name_len;
    int i;

    if (colon == NULL)
        return;
    name_len = (size_t)(colon - line);
    for (i = 0; i < HEADER_COUNT; i++) {
        if (h->values[i] != NULL ||
            jg_ascii_casecmp_n(line, name_len, header_names[i]) != 0)
            continue;
        h->values[i] = jg_strndup(colon + 1, len - name_len - 1);
        return;
    }
}

static void
parse_head(const char *data, size_t size, struct head *h)
{
    size_t pos = 0;
    const char *line;
    size_t len;

    memset(h, 0, sizeof(*h));
    if (!next_line(data, size, &pos, &line, &len))
        return;
    parse_request_line(line, len, h);
    while (next_line(data, size, &pos, &line, &len) && len > 0)
        parse_header_line(line, len, h);
}

static bool
contains(const char *s, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    size_t i;

    for (i = 0; i + n <= len; i++) {
        if (jg_ascii_casecmp_n(s + i, n, needle) == 0)
            return true;
    }
    return false;
}

/*
 * What jg_route_match() must do, written apart from it: the path (the target
 * up to '?') is a route prefix followed by a non-empty segment with no '/'.
 */
static bool
model_route(const char *target, size_t target_len, size_t *prefix_len)
{
    const char *query = memchr(target, '?', target_len);
    size_t path_len = query != NULL ? (size_t)(query - target) : target_len;
    size_t i;

    for (i = 0; i < JG_ARRAY_LEN(routes); i++) {
        size_t n = strlen(routes[i]);

        if (path_len > n && memcmp(target, routes[i], n) == 0 &&
            memchr(target + n, '/', path_len - n) == NULL) {
            *prefix_len = n;
            return true;
        }
    }
    return false;
}

/*
 * Match the target as the server does, then parse the job id segment. A
 * segment that parses must contain nothing that could reach a different
 * resource upstream or split the cache key: no '/', encoded '/', encoded NUL
 * or "..".
 */
static void
check_route(const struct head *h)
{
    const char *segment = NULL;
    const char *name;
    char *target;
    size_t target_len;
    size_t segment_len = 0;
    size_t prefix_len = 0;
    uint8_t job[JG_UUID_LEN];
    enum jg_uuid_status st;

    if (h->target == NULL)
        return;
    /*
     * The server never accepts a NUL in a target, so the copy stops at the
     * first one, as the NUL-terminated target the server passes would.
     */
    target = jg_strndup(h->target, h->target_len);
    target_len = strlen(target);

    name = jg_route_match(target, &segment, &segment_len);
    FUZZ_CHECK((name != NULL) == model_route(target, target_len, &prefix_len));
    if (name == NULL) {
        jg_free(target);
        return;
    }
    FUZZ_CHECK(strcmp(name, "job") == 0 || strcmp(name, "public-job") == 0);
    FUZZ_CHECK(segment == target + prefix_len);
    FUZZ_CHECK(segment_len > 0);
    FUZZ_CHECK(segment + segment_len <= target + target_len);
    FUZZ_CHECK(memchr(segment, '/', segment_len) == NULL);
    FUZZ_CHECK(memchr(segment, '?', segment_len) == NULL);

    st = jg_uuid_parse_segment(segment, segment_len, job);
    FUZZ_CHECK(st == JG_UUID_OK || st == JG_UUID_NOT_V4 ||
               st == JG_UUID_INVALID);
    if (st != JG_UUID_INVALID) {
        FUZZ_CHECK(!contains(segment, segment_len, "%2f"));
        FUZZ_CHECK(!contains(segment, segment_len, "%00"));
        FUZZ_CHECK(!contains(segment, segment_len, ".."));
    }
    jg_free(target);
}

static bool
is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* The value without leading and trailing blanks, in *start and *len. */
static void
trim(const char *value, const char **start, size_t *len)
{
    size_t n = strlen(value);

    while (n > 0 && is_blank(*value)) {
        value++;
        n--;
    }
    while (n > 0 && is_blank(value[n - 1]))
        n--;
    *start = value;
    *len = n;
}

/*
 * What jg_credential_extract() must pick, written apart from it: the first
 * API-key header that is not blank, else a Bearer token.
 */
static enum jg_cred_source
model_extract(char *const values[HEADER_COUNT], const char **token,
              size_t *len)
{
    static const char scheme[] = "bearer";
    const size_t scheme_len = sizeof(scheme) - 1;
    const char *s;
    size_t n;

    *token = NULL;
    *len = 0;
    if (values[HEADER_GALILEO] != NULL) {
        trim(values[HEADER_GALILEO], &s, &n);
        if (n > 0) {
            *token = s;
            *len = n;
            return JG_CRED_GALILEO_KEY;
        }
    }
    if (values[HEADER_SPLUNK] != NULL) {
        trim(values[HEADER_SPLUNK], &s, &n);
        if (n > 0) {
            *token = s;
            *len = n;
            return JG_CRED_SPLUNK_KEY;
        }
    }
    if (values[HEADER_AUTHORIZATION] == NULL)
        return JG_CRED_NONE;

    trim(values[HEADER_AUTHORIZATION], &s, &n);
    if (n <= scheme_len || jg_ascii_casecmp_n(s, scheme_len, scheme) != 0 ||
        !is_blank(s[scheme_len]))
        return JG_CRED_NONE;
    s += scheme_len;
    n -= scheme_len;
    while (n > 0 && is_blank(*s)) {
        s++;
        n--;
    }
    if (n == 0)
        return JG_CRED_NONE;
    *token = s;
    *len = n;
    return JG_CRED_BEARER;
}

static void
check_credential(const struct head *h)
{
    const char *token;
    const char *expected_token;
    const char *value;
    size_t len;
    size_t expected_len;
    enum jg_cred_source src;
    enum jg_cred_source expected;

    src = jg_credential_extract(h->values[HEADER_GALILEO],
                                h->values[HEADER_SPLUNK],
                                h->values[HEADER_AUTHORIZATION], &token,
                                &len);
    expected = model_extract(h->values, &expected_token, &expected_len);
    FUZZ_CHECK(src == expected);
    FUZZ_CHECK(token == expected_token);
    FUZZ_CHECK(len == expected_len);

    if (src == JG_CRED_NONE) {
        FUZZ_CHECK(token == NULL);
        FUZZ_CHECK(len == 0);
        return;
    }

    value = h->values[src == JG_CRED_GALILEO_KEY  ? HEADER_GALILEO
                      : src == JG_CRED_SPLUNK_KEY ? HEADER_SPLUNK
                                                  : HEADER_AUTHORIZATION];
    FUZZ_CHECK(value != NULL);
    FUZZ_CHECK(len > 0);
    FUZZ_CHECK(token >= value);
    FUZZ_CHECK(token + len <= value + strlen(value));
    FUZZ_CHECK(!is_blank(token[0]));
    FUZZ_CHECK(!is_blank(token[len - 1]));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct head h;
    int i;

    parse_head((const char *)data, size, &h);
    check_route(&h);
    check_credential(&h);

    for (i = 0; i < HEADER_COUNT; i++)
        jg_free(h.values[i]);
    return 0;
}
