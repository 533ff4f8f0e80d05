/*
 * Fuzz target for the cache entry codec. Values read back from LMDB may be
 * damaged or written by another version, so the input is first decoded as
 * a stored value, which must never crash. A value that decodes must point
 * inside the input and encode back to the same bytes. Any one-byte change,
 * a missing byte or an extra byte must be detected.
 *
 * The same input is then read as the fields of an entry, encoded and
 * decoded again; the round trip must give back every field, and the ETag
 * must be the first bytes of the body's SHA-256.
 */
#include <openssl/sha.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "jobgate/jg_entry.h"
#include "jobgate/jg_util.h"

/* A reader of the input as consecutive fields, short at the end. */
struct cursor {
    const uint8_t *data;
    size_t left;
};

static const uint8_t *
take(struct cursor *c, size_t want, size_t *got)
{
    const uint8_t *p = c->data;

    *got = want < c->left ? want : c->left;
    c->data += *got;
    c->left -= *got;
    return p;
}

/* Little-endian integer of up to 8 bytes, zero-padded when short. */
static uint64_t
take_uint(struct cursor *c, size_t bytes)
{
    const uint8_t *p;
    uint64_t v = 0;
    size_t got;
    size_t i;

    p = take(c, bytes, &got);
    for (i = 0; i < got; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static enum jg_entry_status
decode_copy(const uint8_t *buf, size_t len)
{
    uint8_t *copy = jg_malloc(len);
    struct jg_entry e;
    enum jg_entry_status st;

    if (len > 0)
        memcpy(copy, buf, len);
    st = jg_entry_decode(copy, len, &e);
    jg_free(copy);
    return st;
}

/* Checks for an input that decoded as a stored value. */
static void
check_decoded(const uint8_t *buf, size_t len, const struct jg_entry *e)
{
    static const size_t positions = 3;
    struct jg_entry reencoded = *e;
    uint8_t *out;
    uint8_t *changed;
    size_t i;

    FUZZ_CHECK(jg_entry_encoded_size(e->content_type_len, e->body_len) ==
               len);
    FUZZ_CHECK((const uint8_t *)e->content_type >= buf);
    FUZZ_CHECK(e->body == e->content_type + e->content_type_len);
    FUZZ_CHECK((const uint8_t *)e->body + e->body_len == buf + len);

    /* A stored ETag is computed from the body, so a value whose ETag is
     * something else was not written by jg_entry_encode(). */
    out = jg_malloc(len);
    jg_entry_encode(out, &reencoded);
    if (memcmp(reencoded.etag, e->etag, JG_ENTRY_ETAG_LEN) == 0)
        FUZZ_CHECK(memcmp(out, buf, len) == 0);
    jg_free(out);

    /* CRC-32C detects every error burst of up to 32 bits. */
    changed = jg_malloc(len + 1);
    for (i = 0; i < positions; i++) {
        size_t at = (len - 1) * i / (positions - 1);

        memcpy(changed, buf, len);
        changed[at] ^= (uint8_t)(buf[len - 1 - at] | 1);
        FUZZ_CHECK(decode_copy(changed, len) != JG_ENTRY_OK);
    }
    memcpy(changed, buf, len);
    changed[len] = 0;
    FUZZ_CHECK(decode_copy(changed, len + 1) != JG_ENTRY_OK);
    FUZZ_CHECK(decode_copy(buf, len - 1) != JG_ENTRY_OK);
    jg_free(changed);
}

/*
 * Read status, stored-at time, content type length, content type and body
 * from the input, encode them, and check that decoding gives them back.
 */
static void
check_round_trip(const uint8_t *data, size_t size)
{
    struct cursor c = {data, size};
    struct jg_entry in;
    struct jg_entry out;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char etag[JG_ENTRY_ETAG_STR_LEN];
    size_t content_type_len;
    size_t encoded_len;
    uint8_t *encoded;

    memset(&in, 0, sizeof(in));
    in.http_status = (uint16_t)take_uint(&c, 2);
    in.stored_at = (int64_t)take_uint(&c, 8);
    content_type_len = (size_t)take_uint(&c, 1);
    in.content_type = (const char *)take(&c, content_type_len,
                                         &in.content_type_len);
    in.body = (const char *)take(&c, c.left, &in.body_len);

    encoded_len = jg_entry_encoded_size(in.content_type_len, in.body_len);
    FUZZ_CHECK(encoded_len > 0);
    FUZZ_CHECK(encoded_len - jg_entry_encoded_size(0, 0) ==
               in.content_type_len + in.body_len);
    encoded = jg_malloc(encoded_len);
    jg_entry_encode(encoded, &in);

    FUZZ_CHECK(jg_entry_decode(encoded, encoded_len, &out) == JG_ENTRY_OK);
    FUZZ_CHECK(out.http_status == in.http_status);
    FUZZ_CHECK(out.stored_at == in.stored_at);
    FUZZ_CHECK(out.content_type_len == in.content_type_len);
    if (in.content_type_len > 0)
        FUZZ_CHECK(memcmp(out.content_type, in.content_type,
                          in.content_type_len) == 0);
    FUZZ_CHECK(out.body_len == in.body_len);
    if (in.body_len > 0)
        FUZZ_CHECK(memcmp(out.body, in.body, in.body_len) == 0);
    FUZZ_CHECK(memcmp(out.etag, in.etag, JG_ENTRY_ETAG_LEN) == 0);

    SHA256((const unsigned char *)(in.body_len > 0 ? in.body : ""),
           in.body_len, digest);
    FUZZ_CHECK(memcmp(out.etag, digest, JG_ENTRY_ETAG_LEN) == 0);

    jg_entry_format_etag(&out, etag);
    FUZZ_CHECK(strlen(etag) == JG_ENTRY_ETAG_STR_LEN - 1);
    FUZZ_CHECK(etag[0] == '"' && etag[JG_ENTRY_ETAG_STR_LEN - 2] == '"');

    jg_free(encoded);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jg_entry e;
    enum jg_entry_status st = jg_entry_decode(data, size, &e);

    FUZZ_CHECK(st == JG_ENTRY_OK || st == JG_ENTRY_TRUNCATED ||
               st == JG_ENTRY_BAD_VERSION || st == JG_ENTRY_BAD_CHECKSUM);
    FUZZ_CHECK(strcmp(jg_entry_status_name(st), "unknown") != 0);
    if (st == JG_ENTRY_OK)
        check_decoded(data, size, &e);

    check_round_trip(data, size);
    return 0;
}
