/*
 * Fuzz target for job id parsing. The input goes to jg_uuid_parse as
 * decoded text and to jg_uuid_parse_segment as a raw path segment. Beyond
 * not crashing, the results must agree with a separately written model of
 * the accepted spellings, an accepted UUID must format to text that parses
 * back to the same bytes, only version 4 with variant digit 8 to b is OK,
 * and percent-encoding the text must not change the segment parser's
 * result.
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "jobgate/jg_util.h"
#include "jobgate/jg_uuid.h"

#define URN_PREFIX "urn:uuid:"
#define URN_PREFIX_LEN (sizeof(URN_PREFIX) - 1)
#define HEX_DIGITS 32

/* Longer text cannot be a UUID, so longer inputs skip the encoding check. */
#define MAX_ENCODED_INPUT 64

static int
hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Collect the 32 hex digits of the 8-4-4-4-12 groups in s[0..len), or of
 * 32 bare digits when bare_ok. Returns false for anything else.
 */
static bool
collect_digits(const char *s, size_t len, bool bare_ok, char hex[HEX_DIGITS])
{
    static const size_t groups[] = {8, 4, 4, 4, 12};
    size_t pos = 0;
    size_t n = 0;
    size_t g;
    size_t i;

    if (bare_ok && len == HEX_DIGITS) {
        memcpy(hex, s, HEX_DIGITS);
        return true;
    }

    for (g = 0; g < JG_ARRAY_LEN(groups); g++) {
        if (g > 0) {
            if (pos >= len || s[pos] != '-')
                return false;
            pos++;
        }
        for (i = 0; i < groups[g]; i++) {
            if (pos >= len)
                return false;
            hex[n++] = s[pos++];
        }
    }
    return pos == len;
}

/*
 * The accepted spellings as the upstream documents them, written apart
 * from src/jg_uuid.c: one "urn:uuid:" prefix or one pair of braces around
 * the hyphenated form, or the hyphenated form or 32 digits alone.
 */
static bool
model_parse(const char *s, size_t len, uint8_t out[JG_UUID_LEN])
{
    char hex[HEX_DIGITS];
    bool wrapped = false;
    size_t i;

    if (len >= URN_PREFIX_LEN && memcmp(s, URN_PREFIX, URN_PREFIX_LEN) == 0) {
        s += URN_PREFIX_LEN;
        len -= URN_PREFIX_LEN;
        wrapped = true;
    } else if (len >= 2 && s[0] == '{' && s[len - 1] == '}') {
        s++;
        len -= 2;
        wrapped = true;
    }

    if (!collect_digits(s, len, !wrapped, hex))
        return false;
    for (i = 0; i < JG_UUID_LEN; i++) {
        int hi = hex_digit(hex[2 * i]);
        int lo = hex_digit(hex[2 * i + 1]);

        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

/* Version digit 4, and a variant digit of 8, 9, a or b (RFC 4122). */
static bool
is_v4(const uint8_t uuid[JG_UUID_LEN])
{
    unsigned version = uuid[6] >> 4;
    unsigned variant = uuid[8] >> 4;

    return version == 4 && variant >= 0x8 && variant <= 0xb;
}

/* Check the bytes a parser returned with status st against the model. */
static void
check_result(const char *text, size_t len, enum jg_uuid_status st,
             const uint8_t uuid[JG_UUID_LEN])
{
    uint8_t expected[JG_UUID_LEN];
    uint8_t again[JG_UUID_LEN];
    char formatted[JG_UUID_STR_LEN];
    bool model_ok = model_parse(text, len, expected);
    size_t i;

    FUZZ_CHECK(st == JG_UUID_OK || st == JG_UUID_NOT_V4 ||
               st == JG_UUID_INVALID);
    FUZZ_CHECK(model_ok == (st != JG_UUID_INVALID));
    if (st == JG_UUID_INVALID)
        return;

    FUZZ_CHECK(memcmp(uuid, expected, JG_UUID_LEN) == 0);
    FUZZ_CHECK((st == JG_UUID_OK) == is_v4(uuid));

    jg_uuid_format(uuid, formatted);
    FUZZ_CHECK(strlen(formatted) == JG_UUID_STR_LEN - 1);
    for (i = 0; i < JG_UUID_STR_LEN - 1; i++) {
        bool hyphen_here = i == 8 || i == 13 || i == 18 || i == 23;
        char c = formatted[i];

        FUZZ_CHECK(hyphen_here ? c == '-'
                               : (c >= '0' && c <= '9') ||
                                     (c >= 'a' && c <= 'f'));
    }
    FUZZ_CHECK(jg_uuid_parse(formatted, JG_UUID_STR_LEN - 1, again) == st);
    FUZZ_CHECK(memcmp(again, uuid, JG_UUID_LEN) == 0);
}

/*
 * Percent-decoding of text that contains no '%' changes nothing, and neither
 * does percent-encoding every byte first, so the segment parser must then
 * agree with the text parser. A NUL or '/' makes the segment invalid
 * however it is spelled.
 */
static void
check_segment(const char *text, size_t len, enum jg_uuid_status text_st,
              const uint8_t text_uuid[JG_UUID_LEN])
{
    static const char upper[] = "0123456789ABCDEF";
    static const char lower[] = "0123456789abcdef";
    char encoded[3 * MAX_ENCODED_INPUT];
    uint8_t uuid[JG_UUID_LEN];
    enum jg_uuid_status st;
    bool forbidden = memchr(text, '\0', len) != NULL ||
                     memchr(text, '/', len) != NULL;
    size_t i;

    if (memchr(text, '%', len) == NULL) {
        st = jg_uuid_parse_segment(text, len, uuid);
        FUZZ_CHECK(st == (forbidden ? JG_UUID_INVALID : text_st));
        if (st != JG_UUID_INVALID)
            FUZZ_CHECK(memcmp(uuid, text_uuid, JG_UUID_LEN) == 0);
    }

    if (len > MAX_ENCODED_INPUT)
        return;
    for (i = 0; i < len; i++) {
        /* Both cases of hex digit, since escapes may use either. */
        const char *digits = i % 2 == 0 ? upper : lower;
        unsigned char c = (unsigned char)text[i];

        encoded[3 * i] = '%';
        encoded[3 * i + 1] = digits[c >> 4];
        encoded[3 * i + 2] = digits[c & 0x0f];
    }
    st = jg_uuid_parse_segment(encoded, 3 * len, uuid);
    FUZZ_CHECK(st == (forbidden ? JG_UUID_INVALID : text_st));
    if (st != JG_UUID_INVALID)
        FUZZ_CHECK(memcmp(uuid, text_uuid, JG_UUID_LEN) == 0);
}

/*
 * Percent-decode a raw segment as jg_uuid.h specifies for the segment
 * parser. Returns the decoded length, or -1 for a malformed escape or
 * a decoded NUL or '/', which the segment parser must reject.
 */
static long
model_decode(const char *segment, size_t len, char *out)
{
    size_t i = 0;
    size_t n = 0;

    while (i < len) {
        char c = segment[i];

        if (c == '%') {
            if (len - i < 3 || hex_digit(segment[i + 1]) < 0 ||
                hex_digit(segment[i + 2]) < 0)
                return -1;
            c = (char)(hex_digit(segment[i + 1]) * 16 +
                       hex_digit(segment[i + 2]));
            i += 3;
        } else {
            i++;
        }
        if (c == '\0' || c == '/')
            return -1;
        out[n++] = c;
    }
    return (long)n;
}

/* The segment parser must give what the text parser gives on the decoding. */
static void
check_raw_segment(const char *segment, size_t len)
{
    uint8_t uuid[JG_UUID_LEN];
    uint8_t expected[JG_UUID_LEN];
    enum jg_uuid_status st = jg_uuid_parse_segment(segment, len, uuid);
    enum jg_uuid_status expected_st = JG_UUID_INVALID;
    char *decoded = jg_malloc(len);
    long n = model_decode(segment, len, decoded);

    if (n >= 0)
        expected_st = jg_uuid_parse(decoded, (size_t)n, expected);
    FUZZ_CHECK(st == expected_st);
    if (st != JG_UUID_INVALID)
        FUZZ_CHECK(memcmp(uuid, expected, JG_UUID_LEN) == 0);
    jg_free(decoded);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    uint8_t uuid[JG_UUID_LEN];
    enum jg_uuid_status st;

    st = jg_uuid_parse(text, size, uuid);
    check_result(text, size, st, uuid);
    check_segment(text, size, st, uuid);
    check_raw_segment(text, size);
    return 0;
}
