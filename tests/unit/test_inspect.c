/*
 * Unit tests for body inspection. The bodies follow the upstream's OrgJobDB
 * schema, and the hard cases are the ones that could make a body wrongly
 * cacheable: fields nested in request_data, values back to back, escapes
 * in keys and values, duplicates, truncation, and text that jsmn's
 * tokenizer accepts although it is not JSON.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "jobgate/jg_inspect.h"
#include "jobgate/jg_util.h"

#define JOB "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b"
#define OTHER_JOB "7e2b3c4d-5e6f-4071-9b8c-0d1e2f3a4b5c"
#define ORG "0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"
#define NESTED_ORG "99999999-8888-4777-a666-555555555555"
#define USER "d4c3b2a1-0f9e-4d8c-b7a6-958473625140"

#define MAX_BODY 65536

/* Fields before and after status, as the upstream orders them. */
#define HEAD_OF(id, org) \
    "{\"id\":" id ",\"organization_id\":" org \
    ",\"job_name\":\"delete_by_metadata\",\"status\":"
#define TAIL                                                                 \
    ",\"request_data\":{\"metadata_key\":\"customer\",\"metadata_value\":"   \
    "\"acme\",\"organization_id\":\"" NESTED_ORG "\",\"status\":"            \
    "\"completed\",\"filters\":[{\"status\":\"failed\",\"id\":\"" OTHER_JOB  \
    "\"}],\"dry_run\":false,\"limit\":1000,\"ratio\":-0.5e+3},"              \
    "\"error_message\":null,\"created_by\":\"" USER "\",\"created_at\":"     \
    "\"2025-06-01T12:00:00.123456Z\",\"updated_at\":"                        \
    "\"2025-06-01T12:05:42.654321Z\"}"
#define BODY_WITH(status) HEAD_OF("\"" JOB "\"", "\"" ORG "\"") status TAIL
#define COMPLETED_BODY BODY_WITH("\"completed\"")

struct fixture {
    struct jg_status_set terminal;
    uint8_t job[JG_UUID_LEN];
    uint8_t org[JG_UUID_LEN];
};

static int
setup(void **state)
{
    static struct fixture fx;

    if (jg_status_set_parse(&fx.terminal, "completed,failed,error,cancelled"))
        return -1;
    if (jg_uuid_parse(JOB, strlen(JOB), fx.job) != JG_UUID_OK)
        return -1;
    if (jg_uuid_parse(ORG, strlen(ORG), fx.org) != JG_UUID_OK)
        return -1;
    *state = &fx;
    return 0;
}

/* Inspect body[0..len), starting from a result that claims a valid org. */
static enum jg_inspect_verdict
inspect_len(void **state, const char *body, size_t len,
            struct jg_inspect_result *r)
{
    struct fixture *fx = *state;
    enum jg_inspect_verdict v;

    memset(r, 0, sizeof(*r));
    r->org_valid = true;
    memset(r->org, 0xee, sizeof(r->org));
    v = jg_inspect_body(body, len, fx->job, &fx->terminal, MAX_BODY, r);
    assert_int_equal(r->verdict, v);
    return v;
}

static void
expect_len(void **state, const char *body, size_t len,
           enum jg_inspect_verdict expected, bool org_valid)
{
    struct fixture *fx = *state;
    struct jg_inspect_result r;
    enum jg_inspect_verdict v = inspect_len(state, body, len, &r);

    if (v != expected || r.org_valid != org_valid)
        print_error("body %.*s\nverdict %s, expected %s; org_valid %d, "
                    "expected %d\n",
                    (int)len, body, jg_inspect_verdict_name(v),
                    jg_inspect_verdict_name(expected), r.org_valid,
                    org_valid);
    assert_int_equal(v, expected);
    assert_int_equal(r.org_valid, org_valid);
    if (org_valid)
        assert_memory_equal(r.org, fx->org, JG_UUID_LEN);
}

static void
expect(void **state, const char *body, enum jg_inspect_verdict expected,
       bool org_valid)
{
    expect_len(state, body, strlen(body), expected, org_valid);
}

static void
test_realistic_completed_cacheable(void **state)
{
    const char *body = COMPLETED_BODY;

    /* About the size of an upstream OrgJobDB response. */
    assert_in_range(strlen(body), 400, 600);
    expect(state, body, JG_INSPECT_CACHEABLE, true);
}

static void
test_each_terminal_status_cacheable(void **state)
{
    expect(state, BODY_WITH("\"completed\""), JG_INSPECT_CACHEABLE, true);
    expect(state, BODY_WITH("\"failed\""), JG_INSPECT_CACHEABLE, true);
    expect(state, BODY_WITH("\"error\""), JG_INSPECT_CACHEABLE, true);
    expect(state, BODY_WITH("\"cancelled\""), JG_INSPECT_CACHEABLE, true);
}

/* request_data contains "completed", but the job is still running. */
static void
test_running_with_nested_terminal(void **state)
{
    static const char *const running[] = {
        BODY_WITH("\"unstarted\""),  BODY_WITH("\"in_progress\""),
        BODY_WITH("\"processed\""),  BODY_WITH("\"pending\""),
        BODY_WITH("\"processing\""), BODY_WITH("\"Completed\""),
        BODY_WITH("\"COMPLETED\""),  BODY_WITH("\"completed \""),
        BODY_WITH("\" completed\""), BODY_WITH("\"complete\""),
        BODY_WITH("\"\""),           BODY_WITH("\"completed\\u0000\""),
        BODY_WITH("\"\\ud83d\\ude80\""),
    };
    size_t i;

    for (i = 0; i < sizeof(running) / sizeof(running[0]); i++)
        expect(state, running[i], JG_INSPECT_NOT_TERMINAL, true);
}

static void
test_status_longer_than_set_names(void **state)
{
    expect(state,
           BODY_WITH("\"waiting_for_a_very_long_named_dependency_to_finish\""),
           JG_INSPECT_NOT_TERMINAL, true);
}

/* Fields present only inside request_data do not count. */
static void
test_nested_fields_not_top_level(void **state)
{
    expect(state,
           "{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
           "\"request_data\":{\"status\":\"completed\"}}",
           JG_INSPECT_MISSING_FIELD, true);
    expect(state,
           "{\"id\":\"" JOB "\",\"status\":\"completed\","
           "\"request_data\":{\"organization_id\":\"" ORG "\"}}",
           JG_INSPECT_MISSING_FIELD, false);
    expect(state,
           "{\"organization_id\":\"" ORG "\",\"status\":\"completed\","
           "\"request_data\":[{\"id\":\"" JOB "\"}]}",
           JG_INSPECT_MISSING_FIELD, false);
    expect(state,
           "{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
           "\"history\":[[\"status\",\"completed\"],{\"status\":\"failed\"}],"
           "\"status\":\"in_progress\"}",
           JG_INSPECT_NOT_TERMINAL, true);
}

static void
test_values_back_to_back(void **state)
{
    expect(state, COMPLETED_BODY COMPLETED_BODY, JG_INSPECT_TRAILING_DATA,
           false);
    expect(state, COMPLETED_BODY "{}", JG_INSPECT_TRAILING_DATA, false);
    expect(state, COMPLETED_BODY " {}", JG_INSPECT_TRAILING_DATA, false);
    expect(state, COMPLETED_BODY "\"x\"", JG_INSPECT_TRAILING_DATA, false);
    expect(state, COMPLETED_BODY "[]", JG_INSPECT_TRAILING_DATA, false);
    expect(state, COMPLETED_BODY "1 ", JG_INSPECT_TRAILING_DATA, false);
    expect(state, COMPLETED_BODY ",", JG_INSPECT_TRAILING_DATA, false);
    expect(state, COMPLETED_BODY ":", JG_INSPECT_TRAILING_DATA, false);
}

static void
test_trailing_whitespace_ok(void **state)
{
    expect(state, COMPLETED_BODY "\n", JG_INSPECT_CACHEABLE, true);
    expect(state, COMPLETED_BODY " \t\r\n  \r\n", JG_INSPECT_CACHEABLE, true);
    expect(state, " \n\t\r" COMPLETED_BODY, JG_INSPECT_CACHEABLE, true);
}

static void
test_trailing_junk_rejected(void **state)
{
    static const char *const bodies[] = {
        COMPLETED_BODY "x",
        COMPLETED_BODY "}",
        COMPLETED_BODY "]",
        COMPLETED_BODY "\f",
        COMPLETED_BODY "\v",
        COMPLETED_BODY "\xc2\xa0",
    };
    size_t i;

    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct jg_inspect_result r;
        enum jg_inspect_verdict v =
            inspect_len(state, bodies[i], strlen(bodies[i]), &r);

        /* jsmn rejects some of these outright, so either verdict fits. */
        if (v != JG_INSPECT_TRAILING_DATA && v != JG_INSPECT_NOT_JSON)
            print_error("case %zu: verdict %s\n", i,
                        jg_inspect_verdict_name(v));
        assert_true(v == JG_INSPECT_TRAILING_DATA || v == JG_INSPECT_NOT_JSON);
        assert_false(r.org_valid);
    }
}

static void
test_garbage_not_json(void **state)
{
    static const char *const bodies[] = {
        "",
        " ",
        "\r\n\t ",
        "garbage",
        "<html><body>502 Bad Gateway</body></html>",
        "null",
        "{",
        "}",
        "{]",
        "[}",
        "{{}}",
        "{\"id\"}",
        "\xef\xbb\xbf{}",
    };
    size_t i;

    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        expect(state, bodies[i], JG_INSPECT_NOT_JSON, false);
}

static void
test_top_level_not_object(void **state)
{
    expect(state, "[" COMPLETED_BODY "]", JG_INSPECT_NOT_OBJECT, false);
    expect(state, "[]", JG_INSPECT_NOT_OBJECT, false);
    expect(state, "\"" JOB "\"", JG_INSPECT_NOT_OBJECT, false);
    expect(state, "42 ", JG_INSPECT_NOT_OBJECT, false);
    expect(state, "true\n", JG_INSPECT_NOT_OBJECT, false);
}

/* Every prefix of a good body is incomplete JSON. */
static void
test_every_truncation_not_json(void **state)
{
    const char *body = COMPLETED_BODY;
    size_t len = strlen(body);
    size_t cut;

    for (cut = 0; cut < len; cut++)
        expect_len(state, body, cut, JG_INSPECT_NOT_JSON, false);
}

static void
test_id_of_other_job(void **state)
{
    expect(state,
           HEAD_OF("\"" OTHER_JOB "\"", "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_ID_MISMATCH, false);
}

static void
test_id_any_accepted_spelling(void **state)
{
    expect(state,
           HEAD_OF("\"6F1A2B3C-4D5E-4F60-8A7B-9C0D1E2F3A4B\"",
                   "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_CACHEABLE, true);
    expect(state,
           HEAD_OF("\"6f1a2b3c4d5e4f608a7b9c0d1e2f3a4b\"",
                   "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_CACHEABLE, true);
    expect(state,
           HEAD_OF("\"{" JOB "}\"", "\"urn:uuid:" ORG "\"")
           "\"completed\"" TAIL,
           JG_INSPECT_CACHEABLE, true);
    expect(state,
           HEAD_OF("\"\\u0036f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b\"",
                   "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_CACHEABLE, true);
}

static void
test_bad_id_and_org(void **state)
{
    /* id problems come first and leave the organization unproven. */
    expect(state, HEAD_OF("\"job-1\"", "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
    expect(state, HEAD_OF("null", "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
    expect(state, HEAD_OF("42", "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
    expect(state,
           HEAD_OF("[\"" JOB "\"]", "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
    expect(state,
           HEAD_OF("\" " JOB "\"", "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
    /* The job as a version 1 UUID cannot be the requested version 4 job. */
    expect(state,
           HEAD_OF("\"6f1a2b3c-4d5e-1f60-8a7b-9c0d1e2f3a4b\"",
                   "\"" ORG "\"") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);

    expect(state, HEAD_OF("\"" JOB "\"", "\"acme\"") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
    expect(state, HEAD_OF("\"" JOB "\"", "null") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
    expect(state, HEAD_OF("\"" JOB "\"", "{}") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
    expect(state,
           HEAD_OF("\"" JOB "\"", "\"6ba7b810-9dad-11d1-80b4-00c04fd430c8\"")
               "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
    expect(state,
           HEAD_OF("\"" JOB "\"", "\"" ORG "\\ud800\"") "\"completed\"" TAIL,
           JG_INSPECT_BAD_FIELD, false);
}

static void
test_status_not_string(void **state)
{
    static const char *const bodies[] = {
        BODY_WITH("1"),
        BODY_WITH("null"),
        BODY_WITH("true"),
        BODY_WITH("{\"name\":\"completed\"}"),
        BODY_WITH("[\"completed\"]"),
        BODY_WITH("\"\\ud800\""),
        BODY_WITH("\"\\udc00completed\""),
        BODY_WITH("\"\\ud83d\\u0041\""),
    };
    size_t i;

    /* id and organization_id are fine, so the organization is proven. */
    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        expect(state, bodies[i], JG_INSPECT_BAD_FIELD, true);
}

static void
test_duplicate_fields(void **state)
{
    expect(state,
           HEAD_OF("\"" JOB "\"", "\"" ORG "\"")
           "\"running\",\"status\":\"completed\"}",
           JG_INSPECT_DUPLICATE_FIELD, false);
    expect(state,
           HEAD_OF("\"" JOB "\"", "\"" ORG "\"")
           "\"completed\",\"status\":\"completed\"}",
           JG_INSPECT_DUPLICATE_FIELD, false);
    expect(state,
           HEAD_OF("\"" JOB "\"", "\"" ORG "\"")
           "\"completed\",\"id\":\"" JOB "\"}",
           JG_INSPECT_DUPLICATE_FIELD, false);
    expect(state,
           HEAD_OF("\"" JOB "\"", "\"" ORG "\"")
           "\"completed\",\"organization_id\":\"" NESTED_ORG "\"}",
           JG_INSPECT_DUPLICATE_FIELD, false);
    /* A duplicate spelled with an escape is still a duplicate. */
    expect(state,
           HEAD_OF("\"" JOB "\"", "\"" ORG "\"")
           "\"running\",\"st\\u0061tus\":\"completed\"}",
           JG_INSPECT_DUPLICATE_FIELD, false);
}

static void
test_missing_fields(void **state)
{
    expect(state, "{}", JG_INSPECT_MISSING_FIELD, false);
    expect(state,
           "{\"organization_id\":\"" ORG "\",\"status\":\"completed\"}",
           JG_INSPECT_MISSING_FIELD, false);
    expect(state, "{\"id\":\"" JOB "\",\"status\":\"completed\"}",
           JG_INSPECT_MISSING_FIELD, false);
    expect(state, "{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\"}",
           JG_INSPECT_MISSING_FIELD, true);
    /* Keys differ by case or by a space: they are other members. */
    expect(state,
           "{\"ID\":\"" JOB "\",\"organization_id\":\"" ORG "\","
           "\"status\":\"completed\"}",
           JG_INSPECT_MISSING_FIELD, false);
    expect(state,
           "{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
           "\"status \":\"completed\"}",
           JG_INSPECT_MISSING_FIELD, true);
}

static void
test_escaped_status_decoded(void **state)
{
    expect(state, BODY_WITH("\"c\\u006fmpleted\""), JG_INSPECT_CACHEABLE,
           true);
    expect(state, BODY_WITH("\"\\u0063\\u006F\\u006d\\u0070leted\""),
           JG_INSPECT_CACHEABLE, true);
    expect(state, BODY_WITH("\"fail\\u0065d\""), JG_INSPECT_CACHEABLE, true);
    expect(state, BODY_WITH("\"completed\\n\""), JG_INSPECT_NOT_TERMINAL,
           true);
    expect(state, BODY_WITH("\"\\/completed\""), JG_INSPECT_NOT_TERMINAL,
           true);
}

/* \u escapes become UTF-8 of 2, 3 and 4 bytes, surrogate pairs included. */
static void
test_escaped_status_utf8(void **state)
{
    struct fixture *fx = *state;
    struct jg_status_set set;
    struct jg_inspect_result r;
    static const char *const bodies[] = {
        HEAD_OF("\"" JOB "\"", "\"" ORG "\"") "\"caf\\u00e9\"}",
        HEAD_OF("\"" JOB "\"", "\"" ORG "\"") "\"\\u2713\"}",
        HEAD_OF("\"" JOB "\"", "\"" ORG "\"") "\"\\ud83d\\ude80\"}",
        HEAD_OF("\"" JOB "\"", "\"" ORG "\"") "\"\\uD83D\\uDE80\"}",
    };
    size_t i;

    assert_int_equal(jg_status_set_parse(&set, "caf\xc3\xa9,\xe2\x9c\x93,"
                                               "\xf0\x9f\x9a\x80"),
                     0);
    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        enum jg_inspect_verdict v = jg_inspect_body(
            bodies[i], strlen(bodies[i]), fx->job, &set, MAX_BODY, &r);

        if (v != JG_INSPECT_CACHEABLE)
            print_error("case %zu: verdict %s\n", i,
                        jg_inspect_verdict_name(v));
        assert_int_equal(v, JG_INSPECT_CACHEABLE);
    }

    /* Without the escape decoding to those bytes, nothing matches. */
    assert_int_equal(jg_inspect_body(bodies[0], strlen(bodies[0]), fx->job,
                                     &fx->terminal, MAX_BODY, &r),
                     JG_INSPECT_NOT_TERMINAL);
}

static void
test_escaped_keys_decoded(void **state)
{
    expect(state,
           "{\"\\u0069d\":\"" JOB "\",\"organization\\u005fid\":\"" ORG "\","
           "\"st\\u0061tus\":\"completed\"}",
           JG_INSPECT_CACHEABLE, true);
    expect(state,
           "{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
           "\"st\\u0061tus\":\"in_progress\",\"request_data\":{}}",
           JG_INSPECT_NOT_TERMINAL, true);
    /* A key that does not decode is some other member, not a field. */
    expect(state,
           "{\"\\ud800\":1,\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
           "\"status\":\"completed\"}",
           JG_INSPECT_CACHEABLE, true);
}

static void
test_unicode_in_other_fields(void **state)
{
    expect(state,
           "{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
           "\"job_name\":\"L\xc3\xb6schung \xf0\x9f\x9a\x80 \\u00e9"
           "\\ud83d\\ude80 \\\"quoted\\\" \\\\ \\b\\f\\n\\r\\t\","
           "\"status\":\"completed\",\"request_data\":{\"\xe2\x9c\x93\":"
           "\"\xe6\x97\xa5\xe6\x9c\xac\"},\"error_message\":null}",
           JG_INSPECT_CACHEABLE, true);
}

static void
test_too_large(void **state)
{
    struct fixture *fx = *state;
    const char *body = COMPLETED_BODY;
    size_t len = strlen(body);
    struct jg_inspect_result r;

    assert_int_equal(jg_inspect_body(body, len, fx->job, &fx->terminal,
                                     len - 1, &r),
                     JG_INSPECT_TOO_LARGE);
    assert_false(r.org_valid);
    assert_int_equal(jg_inspect_body(body, len, fx->job, &fx->terminal, len,
                                     &r),
                     JG_INSPECT_CACHEABLE);
    assert_true(r.org_valid);

    /* The size limit wins over everything else about the body. */
    assert_int_equal(jg_inspect_body("garbage", 7, fx->job, &fx->terminal, 6,
                                     &r),
                     JG_INSPECT_TOO_LARGE);
    assert_int_equal(jg_inspect_body("", 0, fx->job, &fx->terminal, 0, &r),
                     JG_INSPECT_NOT_JSON);
}

/*
 * A body with thousands of tokens and deep nesting in request_data: more
 * tokens than the stack array holds, so the heap path runs.
 */
static void
test_deep_and_wide_request_data(void **state)
{
    size_t cap = 60000;
    char *body = jg_malloc(cap);
    size_t n = 0;
    int depth = 2000;
    int i;

    n += (size_t)snprintf(body + n, cap - n,
                          "{\"id\":\"%s\",\"organization_id\":\"%s\","
                          "\"request_data\":",
                          JOB, ORG);
    for (i = 0; i < depth; i++)
        n += (size_t)snprintf(body + n, cap - n, "{\"status\":[");
    n += (size_t)snprintf(body + n, cap - n, "\"completed\"");
    for (i = 0; i < depth; i++)
        n += (size_t)snprintf(body + n, cap - n, "]}");
    n += (size_t)snprintf(body + n, cap - n, ",\"status\":\"failed\"}");
    assert_true(n < cap);

    expect_len(state, body, n, JG_INSPECT_CACHEABLE, true);

    /* The same body with one closing bracket near the end blanked out. */
    body[n - 25] = ' ';
    expect_len(state, body, n, JG_INSPECT_NOT_JSON, false);
    jg_free(body);
}

static void
test_many_members(void **state)
{
    size_t cap = 60000;
    char *body = jg_malloc(cap);
    size_t n = 0;
    int i;

    n += (size_t)snprintf(body + n, cap - n, "{");
    for (i = 0; i < 1000; i++)
        n += (size_t)snprintf(body + n, cap - n, "\"k%d\":[%d,\"status\"],",
                              i, i);
    n += (size_t)snprintf(body + n, cap - n,
                          "\"id\":\"%s\",\"organization_id\":\"%s\","
                          "\"status\":\"error\"}",
                          JOB, ORG);
    assert_true(n < cap);
    expect_len(state, body, n, JG_INSPECT_CACHEABLE, true);
    jg_free(body);
}

static void
test_nul_bytes(void **state)
{
    static const char inside_string[] =
        "{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
        "\"job_name\":\"a\0b\",\"status\":\"completed\"}";
    static const char after_object[] = COMPLETED_BODY "\0";
    static const char after_object_more[] = COMPLETED_BODY "\0{}";
    static const char before_object[] = "\0" COMPLETED_BODY;
    static const char in_status[] =
        "{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
        "\"status\":\"completed\0\"}";

    /* sizeof - 1: the literal's own terminating NUL is not part of it. */
    expect_len(state, inside_string, sizeof(inside_string) - 1,
               JG_INSPECT_NOT_JSON, false);
    expect_len(state, after_object, sizeof(after_object) - 1,
               JG_INSPECT_TRAILING_DATA, false);
    expect_len(state, after_object_more, sizeof(after_object_more) - 1,
               JG_INSPECT_TRAILING_DATA, false);
    expect_len(state, before_object, sizeof(before_object) - 1,
               JG_INSPECT_NOT_JSON, false);
    expect_len(state, in_status, sizeof(in_status) - 1, JG_INSPECT_NOT_JSON,
               false);
}

/* Text that jsmn's tokenizer accepts although it is not JSON. */
static void
test_tokenizer_leniency_rejected(void **state)
{
#define GOOD_HEAD "{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
    static const char *const bodies[] = {
        GOOD_HEAD "\"status\":\"completed\",}",
        GOOD_HEAD "\"status\":\"completed\",,\"x\":1}",
        GOOD_HEAD ",\"status\":\"completed\"}",
        GOOD_HEAD "\"status\":\"completed\" \"x\":1}",
        GOOD_HEAD "\"status\" \"completed\"}",
        GOOD_HEAD "\"status\"::\"completed\"}",
        GOOD_HEAD "\"x\",\"status\":\"completed\"}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":[1 2]}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":[1,]}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":[,1]}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":[,]}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":{,}}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":[\"a\":1]}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":[{}:1]}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":\"a\":\"b\"}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":1:2}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":nul}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":nulls}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":truefalse}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":01}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":1.}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":.5}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":-}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":1e}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":1e+}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":- 1}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":--1}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":0x10}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":\"tab\there\"}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":\"line\nbreak\"}",
        GOOD_HEAD "\"status\":\"comp\tleted\"}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":\"\\x41\"}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":\"\\u12\"}",
        GOOD_HEAD "\"status\":\"completed\",\"x\":'a'}",
        GOOD_HEAD "\"status\":\"completed\" /* comment */}",
        ",{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
        "\"status\":\"completed\"}",
        ":{\"id\":\"" JOB "\",\"organization_id\":\"" ORG "\","
        "\"status\":\"completed\"}",
    };
#undef GOOD_HEAD
    size_t i;

    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        expect(state, bodies[i], JG_INSPECT_NOT_JSON, false);
}

/* The valid spellings next to the invalid ones above still pass. */
static void
test_valid_json_forms_accepted(void **state)
{
    expect(state,
           "{ \"id\" : \"" JOB "\" ,\n\t\"organization_id\"\r\n:\"" ORG "\","
           "\"status\":\"completed\" , \"a\" : [ ] , \"b\" : { } ,"
           "\"c\":[ 1 , -0 , 0.5 , -1.25e-3 , 1E+9 , 2e10 , true , false ,"
           " null , \"\" , [ [ ] ] , { \"d\" : { } } ] }",
           JG_INSPECT_CACHEABLE, true);
}

static void
test_verdict_names(void **state)
{
    (void)state;
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_CACHEABLE),
                        "cacheable");
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_NOT_TERMINAL),
                        "not-terminal");
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_TOO_LARGE),
                        "too-large");
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_NOT_JSON),
                        "not-json");
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_NOT_OBJECT),
                        "not-object");
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_TRAILING_DATA),
                        "trailing-data");
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_DUPLICATE_FIELD),
                        "duplicate-field");
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_MISSING_FIELD),
                        "missing-field");
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_BAD_FIELD),
                        "bad-field");
    assert_string_equal(jg_inspect_verdict_name(JG_INSPECT_ID_MISMATCH),
                        "id-mismatch");
    assert_string_equal(jg_inspect_verdict_name((enum jg_inspect_verdict)99),
                        "unknown");
}

static void
test_status_set_parse(void **state)
{
    struct jg_status_set set;

    (void)state;
    assert_int_equal(jg_status_set_parse(&set, " completed,failed ,\terror "
                                               ", cancelled"),
                     0);
    assert_int_equal(set.count, 4);
    assert_string_equal(set.names[0], "completed");
    assert_string_equal(set.names[1], "failed");
    assert_string_equal(set.names[2], "error");
    assert_string_equal(set.names[3], "cancelled");

    assert_int_equal(jg_status_set_parse(&set, "done"), 0);
    assert_int_equal(set.count, 1);
    assert_string_equal(set.names[0], "done");

    /* A repeated name is stored once. */
    assert_int_equal(jg_status_set_parse(&set, "done, done,done"), 0);
    assert_int_equal(set.count, 1);

    /* Inner spaces belong to the name. */
    assert_int_equal(jg_status_set_parse(&set, "all done"), 0);
    assert_string_equal(set.names[0], "all done");
}

static void
test_status_set_parse_rejects(void **state)
{
    struct jg_status_set set;
    char list[512];
    size_t n = 0;
    int i;

    (void)state;
    assert_int_equal(jg_status_set_parse(&set, ""), -1);
    assert_int_equal(set.count, 0);
    assert_int_equal(jg_status_set_parse(&set, "  "), -1);
    assert_int_equal(jg_status_set_parse(&set, "a,,b"), -1);
    assert_int_equal(jg_status_set_parse(&set, "a, ,b"), -1);
    assert_int_equal(jg_status_set_parse(&set, "a,"), -1);
    assert_int_equal(jg_status_set_parse(&set, ",a"), -1);
    assert_int_equal(set.count, 0);

    /* 31 bytes fit a name, 32 do not. */
    assert_int_equal(
        jg_status_set_parse(&set, "aaaaaaaaaabbbbbbbbbbccccccccccd"), 0);
    assert_int_equal(
        jg_status_set_parse(&set, "aaaaaaaaaabbbbbbbbbbccccccccccdd"), -1);

    /* 16 names fit, 17 do not. */
    for (i = 0; i < JG_MAX_STATUSES; i++)
        n += (size_t)snprintf(list + n, sizeof(list) - n, "s%d,", i);
    list[n - 1] = '\0';
    assert_int_equal(jg_status_set_parse(&set, list), 0);
    assert_int_equal(set.count, JG_MAX_STATUSES);
    list[n - 1] = ',';
    snprintf(list + n, sizeof(list) - n, "s%d", JG_MAX_STATUSES);
    assert_int_equal(jg_status_set_parse(&set, list), -1);
    assert_int_equal(set.count, 0);
}

static void
test_status_set_contains_exact(void **state)
{
    struct jg_status_set set;

    (void)state;
    assert_int_equal(jg_status_set_parse(&set, "completed,failed"), 0);
    assert_true(jg_status_set_contains(&set, "completed", 9));
    assert_true(jg_status_set_contains(&set, "failed", 6));
    assert_true(jg_status_set_contains(&set, "failedXYZ", 6));
    assert_false(jg_status_set_contains(&set, "completed", 8));
    assert_false(jg_status_set_contains(&set, "Completed", 9));
    assert_false(jg_status_set_contains(&set, "completed\0", 10));
    assert_false(jg_status_set_contains(&set, "", 0));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_realistic_completed_cacheable),
        cmocka_unit_test(test_each_terminal_status_cacheable),
        cmocka_unit_test(test_running_with_nested_terminal),
        cmocka_unit_test(test_status_longer_than_set_names),
        cmocka_unit_test(test_nested_fields_not_top_level),
        cmocka_unit_test(test_values_back_to_back),
        cmocka_unit_test(test_trailing_whitespace_ok),
        cmocka_unit_test(test_trailing_junk_rejected),
        cmocka_unit_test(test_garbage_not_json),
        cmocka_unit_test(test_top_level_not_object),
        cmocka_unit_test(test_every_truncation_not_json),
        cmocka_unit_test(test_id_of_other_job),
        cmocka_unit_test(test_id_any_accepted_spelling),
        cmocka_unit_test(test_bad_id_and_org),
        cmocka_unit_test(test_status_not_string),
        cmocka_unit_test(test_duplicate_fields),
        cmocka_unit_test(test_missing_fields),
        cmocka_unit_test(test_escaped_status_decoded),
        cmocka_unit_test(test_escaped_status_utf8),
        cmocka_unit_test(test_escaped_keys_decoded),
        cmocka_unit_test(test_unicode_in_other_fields),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_deep_and_wide_request_data),
        cmocka_unit_test(test_many_members),
        cmocka_unit_test(test_nul_bytes),
        cmocka_unit_test(test_tokenizer_leniency_rejected),
        cmocka_unit_test(test_valid_json_forms_accepted),
        cmocka_unit_test(test_verdict_names),
        cmocka_unit_test(test_status_set_parse),
        cmocka_unit_test(test_status_set_parse_rejects),
        cmocka_unit_test(test_status_set_contains_exact),
    };

    return cmocka_run_group_tests(tests, setup, NULL);
}
