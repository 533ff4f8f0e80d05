/*
 * Fuzz target for job body inspection. The input is an upstream 200 body
 * for one fixed job id, inspected with jobgate's default terminal statuses
 * and a 64 KiB limit. Every body handed to jg_inspect_body() is an
 * exact-size heap copy with no NUL after it, as a body from libcurl is, so
 * AddressSanitizer reports any read past its end.
 *
 * The invariants come from the header and from the caching rule. A
 * cacheable body proves a version 4 organization, and a body that is not
 * one complete object with the requested id proves none. The body is never
 * modified, and the result does not depend on the limit unless the limit
 * is hit. No strict prefix of a cacheable body is cacheable, nor is the
 * body followed by another value, but trailing whitespace changes nothing.
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "jobgate/jg_inspect.h"
#include "jobgate/jg_util.h"
#include "jobgate/jg_uuid.h"

/* The job id of every seed in corpus/inspect; other ids are mismatches. */
#define JOB "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b"
/* The default of the terminal_statuses config key. */
#define TERMINAL_STATUSES "completed,failed,error,cancelled"
#define MAX_BODY 65536

struct target {
    uint8_t job[JG_UUID_LEN];
    struct jg_status_set terminal;
};

static void
target_init(struct target *t)
{
    FUZZ_CHECK(jg_uuid_parse(JOB, strlen(JOB), t->job) == JG_UUID_OK);
    FUZZ_CHECK(jg_status_set_parse(&t->terminal, TERMINAL_STATUSES) == 0);
}

/*
 * Inspect an exact-size heap copy of body[0..len) and check the
 * invariants that hold for every body.
 */
static enum jg_inspect_verdict
inspect(const struct target *t, const char *body, size_t len,
        size_t max_body_bytes, struct jg_inspect_result *r)
{
    char *copy = jg_malloc(len);
    enum jg_inspect_verdict v;

    if (len > 0)
        memcpy(copy, body, len);
    memset(r, 0xa5, sizeof(*r));
    v = jg_inspect_body(copy, len, t->job, &t->terminal, max_body_bytes, r);

    FUZZ_CHECK(len == 0 || memcmp(copy, body, len) == 0);
    FUZZ_CHECK(r->verdict == v);
    FUZZ_CHECK((unsigned)v <= JG_INSPECT_ID_MISMATCH);
    FUZZ_CHECK(strcmp(jg_inspect_verdict_name(v), "unknown") != 0);
    FUZZ_CHECK((v == JG_INSPECT_TOO_LARGE) == (len > max_body_bytes));
    if (v == JG_INSPECT_CACHEABLE)
        FUZZ_CHECK(r->org_valid);

    /* These are decided before organization_id is looked at. */
    if (v == JG_INSPECT_TOO_LARGE || v == JG_INSPECT_NOT_JSON ||
        v == JG_INSPECT_NOT_OBJECT || v == JG_INSPECT_TRAILING_DATA ||
        v == JG_INSPECT_DUPLICATE_FIELD || v == JG_INSPECT_ID_MISMATCH)
        FUZZ_CHECK(!r->org_valid);

    if (r->org_valid) {
        FUZZ_CHECK(r->org[6] >> 4 == 4);
        FUZZ_CHECK((r->org[8] & 0xc0) == 0x80);
    }

    jg_free(copy);
    return v;
}

static bool
is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * A cacheable body is one complete object and whitespace. Cutting it inside
 * the object leaves an incomplete object, and data after it is trailing
 * data: neither may be cached or prove an organization. Whitespace after
 * it must change nothing.
 */
static void
check_cacheable_edits(const struct target *t, const char *body, size_t len,
                      const struct jg_inspect_result *first)
{
    static const char space[] = " \r\n\t";
    static const char value[] = " {}";
    struct jg_inspect_result r;
    size_t object_len = len;
    char *longer = jg_malloc(len + sizeof(space));

    while (object_len > 0 && is_json_space(body[object_len - 1]))
        object_len--;
    FUZZ_CHECK(object_len > 0);

    FUZZ_CHECK(inspect(t, body, object_len - 1, MAX_BODY, &r) !=
               JG_INSPECT_CACHEABLE);
    FUZZ_CHECK(!r.org_valid);
    FUZZ_CHECK(inspect(t, body, object_len / 2, MAX_BODY, &r) !=
               JG_INSPECT_CACHEABLE);
    FUZZ_CHECK(!r.org_valid);

    memcpy(longer, body, len);
    memcpy(longer + len, space, sizeof(space) - 1);
    FUZZ_CHECK(inspect(t, longer, len + sizeof(space) - 1, MAX_BODY, &r) ==
               JG_INSPECT_CACHEABLE);
    FUZZ_CHECK(memcmp(r.org, first->org, JG_UUID_LEN) == 0);

    memcpy(longer + len, value, sizeof(value) - 1);
    FUZZ_CHECK(inspect(t, longer, len + sizeof(value) - 1, MAX_BODY, &r) ==
               JG_INSPECT_TRAILING_DATA);
    FUZZ_CHECK(!r.org_valid);

    jg_free(longer);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    struct target t;
    struct jg_inspect_result first;
    struct jg_inspect_result again;
    enum jg_inspect_verdict v;

    target_init(&t);
    v = inspect(&t, body, size, MAX_BODY, &first);

    /* The same body gets the same verdict at any limit it fits in. */
    FUZZ_CHECK(inspect(&t, body, size, size, &again) == v);
    FUZZ_CHECK(again.org_valid == first.org_valid);
    if (first.org_valid)
        FUZZ_CHECK(memcmp(again.org, first.org, JG_UUID_LEN) == 0);

    if (size > 0)
        FUZZ_CHECK(inspect(&t, body, size, size - 1, &again) ==
                   JG_INSPECT_TOO_LARGE);

    if (v == JG_INSPECT_CACHEABLE)
        check_cacheable_edits(&t, body, size, &first);
    return 0;
}
