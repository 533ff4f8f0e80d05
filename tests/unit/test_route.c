/*
 * Unit tests for the cached-route matcher: which targets are the job route,
 * which segment they name, and which pass through.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "jobgate/jg_route.h"

#define JOB "6f3c1f2e-3b7a-4c1d-9e8f-0a1b2c3d4e5f"

static void
assert_match(const char *target, const char *route, const char *segment)
{
    const char *seg = NULL;
    size_t len = 0;
    const char *got = jg_route_match(target, &seg, &len);

    assert_non_null(got);
    assert_string_equal(got, route);
    assert_int_equal(len, strlen(segment));
    assert_memory_equal(seg, segment, len);
}

static void
assert_no_match(const char *target)
{
    const char *seg = NULL;
    size_t len = 0;

    assert_null(jg_route_match(target, &seg, &len));
}

static void
test_route_matches_both_prefixes(void **state)
{
    (void)state;
    assert_match("/v2/org-jobs/" JOB, "job", JOB);
    assert_match("/public/v2/org-jobs/" JOB, "public-job", JOB);
}

static void
test_route_query_is_not_segment(void **state)
{
    (void)state;
    assert_match("/v2/org-jobs/" JOB "?job_id=" JOB, "job", JOB);
    assert_match("/v2/org-jobs/" JOB "?a=/b", "job", JOB);
}

static void
test_route_keeps_raw_segment(void **state)
{
    (void)state;
    assert_match("/v2/org-jobs/%7B" JOB "%7D", "job", "%7B" JOB "%7D");
    assert_match("/v2/org-jobs/not-a-uuid", "job", "not-a-uuid");
}

static void
test_route_other_targets_pass(void **state)
{
    (void)state;
    assert_no_match("/v2/org-jobs/");
    assert_no_match("/v2/org-jobs");
    assert_no_match("/v2/org-jobs/" JOB "/");
    assert_no_match("/v2/org-jobs/" JOB "/extra");
    assert_no_match("/v2/org-jobs/?x=1");
    assert_no_match("/v2/org-jobsX/" JOB);
    assert_no_match("/V2/org-jobs/" JOB);
    assert_no_match("/healthcheck");
    assert_no_match("/x/v2/org-jobs/" JOB);
    assert_no_match("");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_matches_both_prefixes),
        cmocka_unit_test(test_route_query_is_not_segment),
        cmocka_unit_test(test_route_keeps_raw_segment),
        cmocka_unit_test(test_route_other_targets_pass),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
