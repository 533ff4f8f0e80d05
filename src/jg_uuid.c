/*
 * UUID parsing that matches what the upstream accepts for a job id in the
 * path. FastAPI hands the percent-decoded segment to pydantic v2, whose
 * UUID4 type parses it with the Rust uuid crate and then checks the version
 * and variant. Matching it exactly matters twice: a spelling the upstream
 * would reject must get the same 422 locally, and every spelling it accepts
 * must map to the same 16 bytes so that one job is one cache key.
 */
#include "jobgate/jg_uuid.h"

#include <stdbool.h>
#include <string.h>

/* Lengths of the four accepted spellings. */
#define SIMPLE_LEN 32
#define HYPHENATED_LEN 36
#define BRACED_LEN 38
#define URN_PREFIX "urn:uuid:"
#define URN_PREFIX_LEN (sizeof(URN_PREFIX) - 1)
#define URN_LEN (URN_PREFIX_LEN + HYPHENATED_LEN)

/*
 * The longest accepted spelling is the URN form. A segment that decodes to
 * more bytes cannot be a UUID, so decoding stops there.
 */
#define MAX_DECODED_LEN URN_LEN

static int
hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parse 32 hex digits, in pairs, into 16 bytes. */
static bool
parse_simple(const char *s, uint8_t out[JG_UUID_LEN])
{
    size_t i;

    for (i = 0; i < JG_UUID_LEN; i++) {
        int hi = hex_value(s[2 * i]);
        int lo = hex_value(s[2 * i + 1]);

        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

/* Parse the 8-4-4-4-12 form: hyphens at exactly 8, 13, 18 and 23. */
static bool
parse_hyphenated(const char *s, uint8_t out[JG_UUID_LEN])
{
    char digits[SIMPLE_LEN];
    size_t i;
    size_t n = 0;

    for (i = 0; i < HYPHENATED_LEN; i++) {
        bool hyphen_here = i == 8 || i == 13 || i == 18 || i == 23;

        if (hyphen_here != (s[i] == '-'))
            return false;
        if (!hyphen_here)
            digits[n++] = s[i];
    }
    return parse_simple(digits, out);
}

/*
 * The version is the high nibble of byte 6. The RFC 4122 variant is the
 * bit pattern 10 at the top of byte 8, so its hex digit is 8, 9, a or b.
 */
static bool
is_v4(const uint8_t uuid[JG_UUID_LEN])
{
    return (uuid[6] >> 4) == 4 && (uuid[8] & 0xc0) == 0x80;
}

enum jg_uuid_status
jg_uuid_parse(const char *s, size_t len, uint8_t out[JG_UUID_LEN])
{
    bool parsed;

    switch (len) {
    case SIMPLE_LEN:
        parsed = parse_simple(s, out);
        break;
    case HYPHENATED_LEN:
        parsed = parse_hyphenated(s, out);
        break;
    case BRACED_LEN:
        parsed = s[0] == '{' && s[BRACED_LEN - 1] == '}' &&
                 parse_hyphenated(s + 1, out);
        break;
    case URN_LEN:
        /* The upstream takes the prefix in lower case only. */
        parsed = memcmp(s, URN_PREFIX, URN_PREFIX_LEN) == 0 &&
                 parse_hyphenated(s + URN_PREFIX_LEN, out);
        break;
    default:
        parsed = false;
        break;
    }

    if (!parsed)
        return JG_UUID_INVALID;
    return is_v4(out) ? JG_UUID_OK : JG_UUID_NOT_V4;
}

/*
 * Percent-decode segment into out, which has room for MAX_DECODED_LEN
 * bytes. Returns the decoded length, or -1 for a malformed escape, a
 * decoded NUL or '/', or a result too long to be a UUID.
 */
static int
percent_decode(const char *segment, size_t len, char out[MAX_DECODED_LEN])
{
    size_t i = 0;
    size_t n = 0;

    while (i < len) {
        char c = segment[i];

        if (c == '%') {
            int hi;
            int lo;

            if (len - i < 3)
                return -1;
            hi = hex_value(segment[i + 1]);
            lo = hex_value(segment[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (char)(hi << 4 | lo);
            i += 3;
        } else {
            i++;
        }

        /*
         * No accepted spelling contains these, so the parser would reject
         * them too, but rejecting them here does not rely on that.
         */
        if (c == '\0' || c == '/')
            return -1;
        if (n == MAX_DECODED_LEN)
            return -1;
        out[n++] = c;
    }
    return (int)n;
}

enum jg_uuid_status
jg_uuid_parse_segment(const char *segment, size_t len,
                      uint8_t out[JG_UUID_LEN])
{
    char decoded[MAX_DECODED_LEN];
    int n = percent_decode(segment, len, decoded);

    if (n < 0)
        return JG_UUID_INVALID;
    return jg_uuid_parse(decoded, (size_t)n, out);
}

void
jg_uuid_format(const uint8_t uuid[JG_UUID_LEN], char out[JG_UUID_STR_LEN])
{
    static const char digits[] = "0123456789abcdef";
    size_t i;
    size_t n = 0;

    for (i = 0; i < JG_UUID_LEN; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[n++] = '-';
        out[n++] = digits[uuid[i] >> 4];
        out[n++] = digits[uuid[i] & 0x0f];
    }
    out[n] = '\0';
}
