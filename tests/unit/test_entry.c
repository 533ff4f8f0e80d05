/*
 * Unit tests for the cache entry format. Values round-trip, and corruption
 * of a stored value (a flipped bit, a cut, a foreign version, lengths that
 * point outside the value) is reported rather than served. The CRC-32C
 * matches the published check values, and the ETag is the truncated
 * SHA-256 of the body alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "jobgate/jg_entry.h"
#include "jobgate/jg_util.h"

#define CONTENT_TYPE "application/json"
#define BODY                                                                 \
    "{\"id\":\"6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b\",\"status\":"           \
    "\"completed\"}"

/* Offsets of the header fields that tests rewrite (layout in jg_entry.c). */
#define OFF_VERSION 3
#define OFF_CHECKSUM 4
#define OFF_BODY_LEN 16
#define OFF_CONTENT_TYPE_LEN 22
#define HEADER_LEN 48

static struct jg_entry
sample_entry(const char *body)
{
    struct jg_entry e;

    memset(&e, 0, sizeof(e));
    e.stored_at = 1717243200;
    e.http_status = 200;
    e.content_type = CONTENT_TYPE;
    e.content_type_len = strlen(CONTENT_TYPE);
    e.body = body;
    e.body_len = strlen(body);
    return e;
}

/* Encode e into a new buffer that the caller frees, its size in *len. */
static uint8_t *
encode(struct jg_entry *e, size_t *len)
{
    uint8_t *buf;

    *len = jg_entry_encoded_size(e->content_type_len, e->body_len);
    assert_true(*len > 0);
    buf = jg_malloc(*len);
    jg_entry_encode(buf, e);
    return buf;
}

/* Recompute the checksum after a test rewrites the header on purpose. */
static void
reseal(uint8_t *buf, size_t len)
{
    uint32_t crc = jg_crc32c(buf + 8, len - 8);

    buf[OFF_CHECKSUM] = (uint8_t)crc;
    buf[OFF_CHECKSUM + 1] = (uint8_t)(crc >> 8);
    buf[OFF_CHECKSUM + 2] = (uint8_t)(crc >> 16);
    buf[OFF_CHECKSUM + 3] = (uint8_t)(crc >> 24);
}

/* Bit-at-a-time CRC-32C, independent of the table in the module. */
static uint32_t
reference_crc32c(const uint8_t *p, size_t len)
{
    uint32_t crc = 0xffffffffu;
    size_t i;
    int bit;

    for (i = 0; i < len; i++) {
        crc ^= p[i];
        for (bit = 0; bit < 8; bit++)
            crc = (crc & 1) ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
    }
    return crc ^ 0xffffffffu;
}

static void
test_crc32c_check_value(void **state)
{
    (void)state;
    assert_int_equal(jg_crc32c("123456789", 9), 0xe3069283u);
    assert_int_equal(jg_crc32c("", 0), 0);
}

/* The iSCSI test vectors for CRC-32C (RFC 3720, appendix B.4). */
static void
test_crc32c_iscsi_vectors(void **state)
{
    uint8_t buf[32];
    size_t i;

    (void)state;
    memset(buf, 0x00, sizeof(buf));
    assert_int_equal(jg_crc32c(buf, sizeof(buf)), 0x8a9136aau);
    memset(buf, 0xff, sizeof(buf));
    assert_int_equal(jg_crc32c(buf, sizeof(buf)), 0x62a8ab43u);
    for (i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)i;
    assert_int_equal(jg_crc32c(buf, sizeof(buf)), 0x46dd794eu);
    for (i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(31 - i);
    assert_int_equal(jg_crc32c(buf, sizeof(buf)), 0x113fdb5cu);
}

/* Every table entry is reached: each byte value, after every other one. */
static void
test_crc32c_matches_bitwise(void **state)
{
    uint8_t buf[2 * 256];
    size_t i;
    size_t len;

    (void)state;
    for (i = 0; i < 256; i++) {
        buf[2 * i] = (uint8_t)i;
        buf[2 * i + 1] = (uint8_t)(255 - i);
    }
    for (len = 0; len <= sizeof(buf); len++)
        assert_int_equal(jg_crc32c(buf, len), reference_crc32c(buf, len));
}

static void
test_round_trip(void **state)
{
    struct jg_entry e = sample_entry(BODY);
    struct jg_entry d;
    size_t len;
    uint8_t *buf;

    (void)state;
    memset(e.etag, 0xaa, sizeof(e.etag));
    buf = encode(&e, &len);
    assert_int_equal(len, HEADER_LEN + strlen(CONTENT_TYPE) + strlen(BODY));

    memset(&d, 0, sizeof(d));
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_OK);
    assert_int_equal(d.stored_at, 1717243200);
    assert_int_equal(d.http_status, 200);
    assert_int_equal(d.content_type_len, strlen(CONTENT_TYPE));
    assert_memory_equal(d.content_type, CONTENT_TYPE, d.content_type_len);
    assert_int_equal(d.body_len, strlen(BODY));
    assert_memory_equal(d.body, BODY, d.body_len);
    assert_memory_equal(d.etag, e.etag, JG_ENTRY_ETAG_LEN);

    /* The decoded entry points into the buffer, not at copies. */
    assert_ptr_equal(d.content_type, (const char *)buf + HEADER_LEN);
    assert_ptr_equal(d.body, d.content_type + d.content_type_len);
    jg_free(buf);
}

static void
test_round_trip_edge_values(void **state)
{
    struct jg_entry e = sample_entry("");
    struct jg_entry d;
    size_t len;
    uint8_t *buf;

    (void)state;
    e.content_type = NULL;
    e.content_type_len = 0;
    e.body = NULL;
    e.stored_at = INT64_MIN;
    e.http_status = UINT16_MAX;
    buf = encode(&e, &len);
    assert_int_equal(len, HEADER_LEN);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_OK);
    assert_int_equal(d.stored_at, INT64_MIN);
    assert_int_equal(d.http_status, UINT16_MAX);
    assert_int_equal(d.content_type_len, 0);
    assert_int_equal(d.body_len, 0);
    jg_free(buf);

    e = sample_entry(BODY);
    e.stored_at = -1;
    buf = encode(&e, &len);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_OK);
    assert_int_equal(d.stored_at, -1);
    jg_free(buf);

    e.stored_at = INT64_MAX;
    buf = encode(&e, &len);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_OK);
    assert_int_equal(d.stored_at, INT64_MAX);
    jg_free(buf);
}

/* A body holding every byte value, NUL included, comes back unchanged. */
static void
test_round_trip_binary_body(void **state)
{
    char body[256];
    struct jg_entry e = sample_entry("");
    struct jg_entry d;
    size_t len;
    uint8_t *buf;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(body); i++)
        body[i] = (char)i;
    e.body = body;
    e.body_len = sizeof(body);
    buf = encode(&e, &len);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_OK);
    assert_int_equal(d.body_len, sizeof(body));
    assert_memory_equal(d.body, body, sizeof(body));
    jg_free(buf);
}

static void
test_every_bit_flip_detected(void **state)
{
    struct jg_entry e = sample_entry(BODY);
    struct jg_entry d;
    size_t len;
    uint8_t *buf;
    size_t bit;

    (void)state;
    buf = encode(&e, &len);
    for (bit = 0; bit < len * 8; bit++) {
        enum jg_entry_status status;

        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        status = jg_entry_decode(buf, len, &d);
        if (status == JG_ENTRY_OK)
            print_error("flip of bit %zu (byte %zu) went undetected\n", bit,
                        bit / 8);
        assert_int_not_equal(status, JG_ENTRY_OK);
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }

    /* Flips outside the checked lengths and version are checksum errors. */
    buf[HEADER_LEN + 3] ^= 0x10;
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_BAD_CHECKSUM);
    buf[HEADER_LEN + 3] ^= 0x10;
    buf[OFF_CHECKSUM] ^= 0x01;
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_BAD_CHECKSUM);
    buf[OFF_CHECKSUM] ^= 0x01;
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_OK);
    jg_free(buf);
}

static void
test_truncated_at_every_length(void **state)
{
    struct jg_entry e = sample_entry(BODY);
    struct jg_entry d;
    size_t len;
    size_t cut;
    uint8_t *buf;
    uint8_t *longer;

    (void)state;
    buf = encode(&e, &len);
    for (cut = 0; cut < len; cut++) {
        enum jg_entry_status status = jg_entry_decode(buf, cut, &d);

        if (status != JG_ENTRY_TRUNCATED)
            print_error("cut at %zu of %zu: %s\n", cut, len,
                        jg_entry_status_name(status));
        assert_int_equal(status, JG_ENTRY_TRUNCATED);
    }

    /* A byte more than the lengths require is as wrong as a byte less. */
    longer = jg_malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    assert_int_equal(jg_entry_decode(longer, len + 1, &d), JG_ENTRY_TRUNCATED);
    jg_free(longer);
    jg_free(buf);
}

static void
test_unknown_version(void **state)
{
    struct jg_entry e = sample_entry(BODY);
    struct jg_entry d;
    size_t len;
    uint8_t *buf;

    (void)state;
    buf = encode(&e, &len);
    assert_int_equal(buf[OFF_VERSION], JG_ENTRY_VERSION);

    /* Even a value with a correct checksum is refused by version. */
    buf[OFF_VERSION] = JG_ENTRY_VERSION + 1;
    reseal(buf, len);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_BAD_VERSION);
    buf[OFF_VERSION] = 0;
    reseal(buf, len);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_BAD_VERSION);
    buf[OFF_VERSION] = JG_ENTRY_VERSION;
    reseal(buf, len);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_OK);

    /* A value that is not an entry at all: the magic differs. */
    buf[0] = 'X';
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_BAD_VERSION);
    jg_free(buf);
}

static void
test_huge_lengths_in_header(void **state)
{
    struct jg_entry e = sample_entry(BODY);
    struct jg_entry d;
    size_t len;
    uint8_t *buf;

    (void)state;
    buf = encode(&e, &len);

    memset(buf + OFF_BODY_LEN, 0xff, 4);
    reseal(buf, len);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_TRUNCATED);
    jg_free(buf);

    buf = encode(&e, &len);
    memset(buf + OFF_CONTENT_TYPE_LEN, 0xff, 2);
    reseal(buf, len);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_TRUNCATED);

    /* Both at their maximum: the sum must not wrap to a small size. */
    memset(buf + OFF_BODY_LEN, 0xff, 4);
    reseal(buf, len);
    assert_int_equal(jg_entry_decode(buf, len, &d), JG_ENTRY_TRUNCATED);
    jg_free(buf);
}

static void
test_encoded_size_limits(void **state)
{
    (void)state;
    assert_int_equal(jg_entry_encoded_size(0, 0), HEADER_LEN);
    assert_int_equal(jg_entry_encoded_size(10, 100), HEADER_LEN + 110);
    assert_int_equal(jg_entry_encoded_size(JG_ENTRY_MAX_CONTENT_TYPE_LEN, 0),
                     HEADER_LEN + JG_ENTRY_MAX_CONTENT_TYPE_LEN);
    assert_int_equal(
        jg_entry_encoded_size(JG_ENTRY_MAX_CONTENT_TYPE_LEN + 1, 0), 0);
    assert_int_equal(jg_entry_encoded_size(SIZE_MAX, SIZE_MAX), 0);
#if SIZE_MAX > UINT32_MAX
    assert_int_equal(jg_entry_encoded_size(0, JG_ENTRY_MAX_BODY_LEN),
                     HEADER_LEN + (size_t)JG_ENTRY_MAX_BODY_LEN);
    assert_int_equal(
        jg_entry_encoded_size(0, (size_t)JG_ENTRY_MAX_BODY_LEN + 1), 0);
#endif
}

static void
test_etag_known_values(void **state)
{
    struct jg_entry e = sample_entry("");
    char text[JG_ENTRY_ETAG_STR_LEN];
    size_t len;
    uint8_t *buf;

    (void)state;

    /* SHA-256("") starts e3b0c44298fc1c14. */
    buf = encode(&e, &len);
    jg_entry_format_etag(&e, text);
    assert_string_equal(text, "\"e3b0c44298fc1c14\"");
    jg_free(buf);

    /* SHA-256("abc") starts ba7816bf8f01cfea. */
    e = sample_entry("abc");
    buf = encode(&e, &len);
    jg_entry_format_etag(&e, text);
    assert_string_equal(text, "\"ba7816bf8f01cfea\"");
    assert_int_equal(strlen(text), JG_ENTRY_ETAG_STR_LEN - 1);
    jg_free(buf);
}

static void
test_etag_stable_and_body_only(void **state)
{
    struct jg_entry a = sample_entry(BODY);
    struct jg_entry b = sample_entry(BODY);
    struct jg_entry c = sample_entry(BODY " ");
    struct jg_entry d;
    char text_a[JG_ENTRY_ETAG_STR_LEN];
    char text_d[JG_ENTRY_ETAG_STR_LEN];
    uint8_t *buf_a;
    uint8_t *buf_b;
    uint8_t *buf_c;
    size_t len;

    (void)state;
    buf_a = encode(&a, &len);

    /* Other metadata and a stale input etag do not change it. */
    b.http_status = 203;
    b.stored_at = 42;
    b.content_type = "text/plain";
    b.content_type_len = strlen("text/plain");
    memset(b.etag, 0x5a, sizeof(b.etag));
    buf_b = encode(&b, &len);
    assert_memory_equal(a.etag, b.etag, JG_ENTRY_ETAG_LEN);

    buf_c = encode(&c, &len);
    assert_memory_not_equal(a.etag, c.etag, JG_ENTRY_ETAG_LEN);

    /* The decoded entry formats the same ETag as the encoded one. */
    assert_int_equal(jg_entry_decode(buf_c, len, &d), JG_ENTRY_OK);
    jg_entry_format_etag(&c, text_a);
    jg_entry_format_etag(&d, text_d);
    assert_string_equal(text_a, text_d);

    jg_free(buf_a);
    jg_free(buf_b);
    jg_free(buf_c);
}

static void
test_status_names(void **state)
{
    (void)state;
    assert_string_equal(jg_entry_status_name(JG_ENTRY_OK), "ok");
    assert_string_equal(jg_entry_status_name(JG_ENTRY_TRUNCATED), "truncated");
    assert_string_equal(jg_entry_status_name(JG_ENTRY_BAD_VERSION),
                        "bad-version");
    assert_string_equal(jg_entry_status_name(JG_ENTRY_BAD_CHECKSUM),
                        "bad-checksum");
    assert_string_equal(jg_entry_status_name((enum jg_entry_status)99),
                        "unknown");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_check_value),
        cmocka_unit_test(test_crc32c_iscsi_vectors),
        cmocka_unit_test(test_crc32c_matches_bitwise),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_round_trip_edge_values),
        cmocka_unit_test(test_round_trip_binary_body),
        cmocka_unit_test(test_every_bit_flip_detected),
        cmocka_unit_test(test_truncated_at_every_length),
        cmocka_unit_test(test_unknown_version),
        cmocka_unit_test(test_huge_lengths_in_header),
        cmocka_unit_test(test_encoded_size_limits),
        cmocka_unit_test(test_etag_known_values),
        cmocka_unit_test(test_etag_stable_and_body_only),
        cmocka_unit_test(test_status_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
