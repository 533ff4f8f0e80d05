/*
 * Unit tests for UUID parsing. Every spelling the upstream accepts gives
 * the same 16 bytes, and every spelling it rejects is rejected with the
 * same error type. Percent-decoding of the raw path segment cannot smuggle
 * a NUL, a '/' or a half escape past the parser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "jobgate/jg_uuid.h"

/* One version 4 UUID with an RFC 4122 variant (nibble 8), and its bytes. */
#define CANONICAL "1b4e28ba-2fa1-4d2e-883f-0016d3cca427"
static const uint8_t canonical_bytes[JG_UUID_LEN] = {
    0x1b, 0x4e, 0x28, 0xba, 0x2f, 0xa1, 0x4d, 0x2e,
    0x88, 0x3f, 0x00, 0x16, 0xd3, 0xcc, 0xa4, 0x27,
};

static void
expect_parse(const char *input, enum jg_uuid_status expected)
{
    uint8_t out[JG_UUID_LEN];
    enum jg_uuid_status got = jg_uuid_parse(input, strlen(input), out);

    if (got != expected)
        print_error("jg_uuid_parse(\"%s\") = %d, expected %d\n", input,
                    (int)got, (int)expected);
    assert_int_equal(got, expected);
}

static void
expect_segment(const char *input, enum jg_uuid_status expected)
{
    uint8_t out[JG_UUID_LEN];
    enum jg_uuid_status got = jg_uuid_parse_segment(input, strlen(input), out);

    if (got != expected)
        print_error("jg_uuid_parse_segment(\"%s\") = %d, expected %d\n",
                    input, (int)got, (int)expected);
    assert_int_equal(got, expected);
}

static void
test_accepted_spellings_same_bytes(void **state)
{
    static const char *const spellings[] = {
        CANONICAL,
        "1B4E28BA-2FA1-4D2E-883F-0016D3CCA427",
        "1b4E28Ba-2fA1-4D2e-883F-0016d3CCa427",
        "1b4e28ba2fa14d2e883f0016d3cca427",
        "1B4E28BA2FA14D2E883F0016D3CCA427",
        ("{" CANONICAL "}"),
        "{1B4E28BA-2FA1-4D2E-883F-0016D3CCA427}",
        ("urn:uuid:" CANONICAL),
        "urn:uuid:1B4E28BA-2FA1-4D2E-883F-0016D3CCA427",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++) {
        uint8_t out[JG_UUID_LEN];

        memset(out, 0xee, sizeof(out));
        expect_parse(spellings[i], JG_UUID_OK);
        jg_uuid_parse(spellings[i], strlen(spellings[i]), out);
        assert_memory_equal(out, canonical_bytes, JG_UUID_LEN);
    }
}

static void
test_rejected_spellings(void **state)
{
    static const char *const rejected[] = {
        "",
        "URN:UUID:" CANONICAL,
        "Urn:Uuid:" CANONICAL,
        "urn:UUID:" CANONICAL,
        "uuid:" CANONICAL,
        "urn:uuid:{" CANONICAL "}",
        "{1b4e28ba2fa14d2e883f0016d3cca427}",
        "urn:uuid:1b4e28ba2fa14d2e883f0016d3cca427",
        " " CANONICAL,
        CANONICAL " ",
        " " CANONICAL " ",
        "\t" CANONICAL,
        CANONICAL "\n",
        "{" CANONICAL,
        CANONICAL "}",
        "(" CANONICAL ")",
        "[" CANONICAL "]",
        "}" CANONICAL "{",
        "1b4e28ba-2fa1-4d2e-883f-0016d3cca42",
        "1b4e28ba-2fa1-4d2e-883f-0016d3cca4270",
        "1b4e28ba2fa14d2e883f0016d3cca42",
        "1b4e28ba2fa14d2e883f0016d3cca4270",
        "1b4e28ba-2fa1-4d2e-883f-0016d3cca42g",
        "1b4e28ba2fa14d2e883f0016d3cca42z",
        "1b4e28ba-2fa1-4d2e-883f+0016d3cca427",
        "1b4e28ba_2fa1_4d2e_883f_0016d3cca427",
        "0x1b4e28ba2fa14d2e883f0016d3cca427",
        "1b4e28ba-2fa14d2e-883f-0016d3cca427a",
        "1b4e28ba-2fa1-4d2e-883f0016d3cca427",
        "-1b4e28ba2fa14d2e883f0016d3cca427-",
        "1b4e-28ba2fa1-4d2e-883f-0016d3cca427",
        "1b4e28ba2-fa1-4d2e-883f-0016d3cca427",
        "1b4e28ba-2fa1-4d2e8-83f-0016d3cca427",
        "1b4e28ba-2fa1-4d2e-883f0-016d3cca427",
        "1b4e28ba--2fa14d2e-883f-0016d3cca427",
        "------------------------------------",
        "not a uuid",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(rejected) / sizeof(rejected[0]); i++)
        expect_parse(rejected[i], JG_UUID_INVALID);
}

/* Each hyphen moved by one place in either direction, length kept at 36. */
static void
test_moved_hyphens_rejected(void **state)
{
    static const size_t hyphens[] = {8, 13, 18, 23};
    size_t h;

    (void)state;
    for (h = 0; h < 4; h++) {
        int delta;

        for (delta = -1; delta <= 1; delta += 2) {
            char moved[sizeof(CANONICAL)];
            size_t from = hyphens[h];
            size_t to = (size_t)((int)from + delta);

            memcpy(moved, CANONICAL, sizeof(CANONICAL));
            moved[from] = moved[to];
            moved[to] = '-';
            assert_int_equal(strlen(moved), 36);
            expect_parse(moved, JG_UUID_INVALID);
        }
    }
}

static void
test_embedded_nul_rejected(void **state)
{
    char with_nul[sizeof(CANONICAL)];
    uint8_t out[JG_UUID_LEN];

    (void)state;
    memcpy(with_nul, CANONICAL, sizeof(CANONICAL));
    with_nul[35] = '\0';
    assert_int_equal(jg_uuid_parse(with_nul, 36, out), JG_UUID_INVALID);
}

static void
test_other_versions_not_v4(void **state)
{
    static const char *const not_v4[] = {
        /* version 1, 3, 5, 7 with an RFC 4122 variant */
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "6fa459ea-ee8a-3ca4-894e-db77e160355e",
        "886313e1-3b8a-5372-9b90-0c9aee199e5d",
        "01890a5d-ac96-774b-bcce-b302099a8057",
        /* nil and max UUIDs */
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        /* version 4 with a variant nibble outside 8, 9, a, b */
        "1b4e28ba-2fa1-4d2e-083f-0016d3cca427",
        "1b4e28ba-2fa1-4d2e-783f-0016d3cca427",
        "1b4e28ba-2fa1-4d2e-c83f-0016d3cca427",
        "1b4e28ba-2fa1-4d2e-f83f-0016d3cca427",
        /* the same rules apply to every accepted spelling */
        "6ba7b8109dad11d180b400c04fd430c8",
        "{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}",
        "urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(not_v4) / sizeof(not_v4[0]); i++)
        expect_parse(not_v4[i], JG_UUID_NOT_V4);
}

static void
test_v4_variants_accepted(void **state)
{
    (void)state;
    expect_parse("1b4e28ba-2fa1-4d2e-883f-0016d3cca427", JG_UUID_OK);
    expect_parse("1b4e28ba-2fa1-4d2e-983f-0016d3cca427", JG_UUID_OK);
    expect_parse("1b4e28ba-2fa1-4d2e-a83f-0016d3cca427", JG_UUID_OK);
    expect_parse("1b4e28ba-2fa1-4d2e-B83f-0016d3cca427", JG_UUID_OK);
}

static void
test_not_v4_still_fills_bytes(void **state)
{
    static const uint8_t v1_bytes[JG_UUID_LEN] = {
        0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1,
        0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8,
    };
    const char *v1 = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
    uint8_t out[JG_UUID_LEN];

    (void)state;
    assert_int_equal(jg_uuid_parse(v1, strlen(v1), out), JG_UUID_NOT_V4);
    assert_memory_equal(out, v1_bytes, JG_UUID_LEN);
}

static void
test_segment_decodes_escapes(void **state)
{
    static const char *const segments[] = {
        CANONICAL,
        "%7B" CANONICAL "%7D",
        "%7b" CANONICAL "%7d",
        "%7B" CANONICAL "%7d",
        "{" CANONICAL "%7D",
        "urn%3Auuid%3A" CANONICAL,
        "urn%3auuid:" CANONICAL,
        "%31b4e28ba-2fa1-4d2e-883f-0016d3cca427",
        "1b4e28ba%2D2fa1%2d4d2e-883f-0016d3cca427",
        /* every byte of the longest spelling escaped: 135 raw bytes */
        "%75%72%6e%3a%75%75%69%64%3a%31%62%34%65%32%38%62%61%2d%32%66%61%31"
        "%2d%34%64%32%65%2d%38%38%33%66%2d%30%30%31%36%64%33%63%63%61%34%32"
        "%37",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(segments) / sizeof(segments[0]); i++) {
        uint8_t out[JG_UUID_LEN];

        expect_segment(segments[i], JG_UUID_OK);
        jg_uuid_parse_segment(segments[i], strlen(segments[i]), out);
        assert_memory_equal(out, canonical_bytes, JG_UUID_LEN);
    }
}

static void
test_segment_rejects_bad_escapes(void **state)
{
    static const char *const rejected[] = {
        "",
        "%",
        "%4",
        "%7B" CANONICAL "%7",
        "%7B" CANONICAL "%",
        CANONICAL "%",
        "%zz" CANONICAL,
        "%7g" CANONICAL "%7D",
        "%%7B" CANONICAL "%7D",
        "%257B" CANONICAL "%257D",
        CANONICAL "%00",
        "%00" CANONICAL,
        "1b4e28ba-2fa1-4d2e-883f-0016d3cca42%00",
        "1b4e28ba-2fa1-4d2e-883f-0016d3cca4%2F",
        "1b4e28ba-2fa1-4d2e-883f-0016d3cca4%2f",
        CANONICAL "%2F",
        CANONICAL "/",
        "1b4e28ba/2fa1/4d2e/883f/0016d3cca427",
        "1b4e28ba%2F2fa1%2F4d2e%2F883f%2F0016d3cca427",
        "%20" CANONICAL,
        CANONICAL "%20",
        "+" CANONICAL,
        "URN%3AUUID%3A" CANONICAL,
        "%7B1b4e28ba2fa14d2e883f0016d3cca427%7D",
        "1b4e28ba-2fa1-4d2e-883f-0016d3cca427?",
        "1b4e-28ba2fa1-4d2e-883f-0016d3cca427",
        "..",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(rejected) / sizeof(rejected[0]); i++)
        expect_segment(rejected[i], JG_UUID_INVALID);
}

static void
test_segment_too_long_rejected(void **state)
{
    char segment[300];

    (void)state;

    /* Ten leading zeros in front of a valid form decode past any spelling. */
    memset(segment, '0', 10);
    memcpy(segment + 10, CANONICAL, sizeof(CANONICAL));
    expect_segment(segment, JG_UUID_INVALID);

    /* Long runs of escaped and plain bytes must stop at the bound. */
    memset(segment, 'a', sizeof(segment) - 1);
    segment[sizeof(segment) - 1] = '\0';
    expect_segment(segment, JG_UUID_INVALID);
}

static void
test_segment_other_version_not_v4(void **state)
{
    (void)state;
    expect_segment("%7B6ba7b810-9dad-11d1-80b4-00c04fd430c8%7D",
                   JG_UUID_NOT_V4);
    expect_segment("01890a5d-ac96-774b-bcce-b302099a8057", JG_UUID_NOT_V4);
}

static void
test_format_lower_hyphenated(void **state)
{
    static const uint8_t upper_input[JG_UUID_LEN] = {
        0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x47, 0x89,
        0xab, 0xcd, 0xef, 0xff, 0x00, 0x10, 0x20, 0x30,
    };
    char text[JG_UUID_STR_LEN];
    uint8_t back[JG_UUID_LEN];

    (void)state;
    jg_uuid_format(canonical_bytes, text);
    assert_string_equal(text, CANONICAL);

    jg_uuid_format(upper_input, text);
    assert_string_equal(text, "abcdef01-2345-4789-abcd-efff00102030");
    assert_int_equal(jg_uuid_parse(text, strlen(text), back), JG_UUID_OK);
    assert_memory_equal(back, upper_input, JG_UUID_LEN);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted_spellings_same_bytes),
        cmocka_unit_test(test_rejected_spellings),
        cmocka_unit_test(test_moved_hyphens_rejected),
        cmocka_unit_test(test_embedded_nul_rejected),
        cmocka_unit_test(test_other_versions_not_v4),
        cmocka_unit_test(test_v4_variants_accepted),
        cmocka_unit_test(test_not_v4_still_fills_bytes),
        cmocka_unit_test(test_segment_decodes_escapes),
        cmocka_unit_test(test_segment_rejects_bad_escapes),
        cmocka_unit_test(test_segment_too_long_rejected),
        cmocka_unit_test(test_segment_other_version_not_v4),
        cmocka_unit_test(test_format_lower_hyphenated),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
