/*
 * The cache entry format. LMDB hands back whatever bytes were stored, and
 * a stored value may be damaged on disk or written by another jobgate
 * version sharing the cache directory. So every value carries a format
 * version and a CRC-32C, checked on every read before any byte of it
 * reaches a client.
 *
 * Layout, all integers little-endian, header 48 bytes:
 *
 *   offset  size  field
 *        0     3  magic "JGE"
 *        3     1  format version (JG_ENTRY_VERSION)
 *        4     4  CRC-32C of every byte from offset 8 to the end
 *        8     8  stored_at, signed seconds since the epoch
 *       16     4  body length
 *       20     2  HTTP status
 *       22     2  content type length
 *       24     8  ETag: the first 8 bytes of the SHA-256 of the body
 *       32    16  owner: the credential tag of the fetcher, or zeros
 *       48     -  content type, then body
 *
 * The checksum sits right after the version so that it covers everything
 * that follows it, including the lengths and the ETag.
 */
#include "jobgate/jg_entry.h"

#include <openssl/sha.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobgate/jg_util.h"

#define HEADER_LEN 48
#define OFF_VERSION 3
#define OFF_CHECKSUM 4
#define OFF_STORED_AT 8
#define OFF_BODY_LEN 16
#define OFF_HTTP_STATUS 20
#define OFF_CONTENT_TYPE_LEN 22
#define OFF_ETAG 24
#define OFF_OWNER 32
/* The checksum covers everything after its own field. */
#define CHECKED_FROM OFF_STORED_AT

static const uint8_t magic[OFF_VERSION] = {'J', 'G', 'E'};

/*
 * CRC-32C (Castagnoli), reflected, polynomial 0x82F63B78: entry i is the
 * CRC register after shifting byte value i through eight rounds of the
 * polynomial, starting from i.
 */
static const uint32_t crc32c_table[256] = {
    0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
    0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
    0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
    0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
    0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
    0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
    0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
    0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
    0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
    0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
    0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
    0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
    0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
    0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
    0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
    0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
    0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
    0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
    0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
    0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
    0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
    0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
    0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
    0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
    0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
    0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
    0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
    0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
    0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
    0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
    0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
    0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
    0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
    0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
    0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
    0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
    0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
    0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
    0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
    0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
    0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
    0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
    0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

static const char *const status_names[] = {
    [JG_ENTRY_OK] = "ok",
    [JG_ENTRY_TRUNCATED] = "truncated",
    [JG_ENTRY_BAD_VERSION] = "bad-version",
    [JG_ENTRY_BAD_CHECKSUM] = "bad-checksum",
};

static uint32_t
crc32c_by_table(const uint8_t *p, size_t len, uint32_t crc)
{
    size_t i;

    for (i = 0; i < len; i++)
        crc = crc32c_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
/*
 * SSE 4.2's crc32 instruction computes CRC-32C eight bytes at a time,
 * about eight times fewer instructions than the table on a cache hit,
 * where every entry read is checked.
 */
__attribute__((target("sse4.2"))) static uint32_t
crc32c_by_instruction(const uint8_t *p, size_t len, uint32_t crc)
{
    uint64_t crc64 = crc;

    while (len >= 8) {
        uint64_t word;

        memcpy(&word, p, sizeof(word));
        crc64 = __builtin_ia32_crc32di(crc64, word);
        p += 8;
        len -= 8;
    }
    crc = (uint32_t)crc64;
    while (len > 0) {
        crc = __builtin_ia32_crc32qi(crc, *p++);
        len--;
    }
    return crc;
}
#endif

uint32_t
jg_crc32c(const void *data, size_t len)
{
    uint32_t crc = 0xffffffffu;

#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return crc32c_by_instruction(data, len, crc) ^ 0xffffffffu;
#endif
    return crc32c_by_table(data, len, crc) ^ 0xffffffffu;
}

static void
put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void
put_u32(uint8_t *p, uint32_t v)
{
    put_u16(p, (uint16_t)v);
    put_u16(p + 2, (uint16_t)(v >> 16));
}

static void
put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t
get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
get_u32(const uint8_t *p)
{
    return (uint32_t)get_u16(p) | (uint32_t)get_u16(p + 2) << 16;
}

static uint64_t
get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static bool
lengths_fit(size_t content_type_len, size_t body_len)
{
    return content_type_len <= JG_ENTRY_MAX_CONTENT_TYPE_LEN &&
           body_len <= JG_ENTRY_MAX_BODY_LEN &&
           body_len <= SIZE_MAX - HEADER_LEN - content_type_len;
}

size_t
jg_entry_encoded_size(size_t content_type_len, size_t body_len)
{
    if (!lengths_fit(content_type_len, body_len))
        return 0;
    return HEADER_LEN + content_type_len + body_len;
}

static void
compute_etag(const char *body, size_t body_len, uint8_t etag[JG_ENTRY_ETAG_LEN])
{
    unsigned char digest[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)(body_len > 0 ? body : ""), body_len,
           digest);
    memcpy(etag, digest, JG_ENTRY_ETAG_LEN);
}

void
jg_entry_encode(uint8_t *out, struct jg_entry *entry)
{
    uint8_t *p = out + HEADER_LEN;
    size_t total;

    /* jg_entry_encoded_size() returned 0 for these: a caller bug. */
    if (!lengths_fit(entry->content_type_len, entry->body_len)) {
        fprintf(stderr, "jobgate: cache entry too large to encode "
                        "(content type %zu bytes, body %zu bytes)\n",
                entry->content_type_len, entry->body_len);
        abort();
    }
    total = HEADER_LEN + entry->content_type_len + entry->body_len;

    compute_etag(entry->body, entry->body_len, entry->etag);

    memcpy(out, magic, sizeof(magic));
    out[OFF_VERSION] = JG_ENTRY_VERSION;
    put_u64(out + OFF_STORED_AT, (uint64_t)entry->stored_at);
    put_u32(out + OFF_BODY_LEN, (uint32_t)entry->body_len);
    put_u16(out + OFF_HTTP_STATUS, entry->http_status);
    put_u16(out + OFF_CONTENT_TYPE_LEN, (uint16_t)entry->content_type_len);
    memcpy(out + OFF_ETAG, entry->etag, JG_ENTRY_ETAG_LEN);
    memcpy(out + OFF_OWNER, entry->owner, JG_ENTRY_OWNER_LEN);

    if (entry->content_type_len > 0)
        memcpy(p, entry->content_type, entry->content_type_len);
    p += entry->content_type_len;
    if (entry->body_len > 0)
        memcpy(p, entry->body, entry->body_len);

    put_u32(out + OFF_CHECKSUM,
            jg_crc32c(out + CHECKED_FROM, total - CHECKED_FROM));
}

enum jg_entry_status
jg_entry_decode(const uint8_t *buf, size_t len, struct jg_entry *out)
{
    uint64_t expected;
    size_t content_type_len;
    size_t body_len;

    if (len < HEADER_LEN)
        return JG_ENTRY_TRUNCATED;
    if (memcmp(buf, magic, sizeof(magic)) != 0 ||
        buf[OFF_VERSION] != JG_ENTRY_VERSION)
        return JG_ENTRY_BAD_VERSION;

    /* Summed in 64 bits: at most 48 + 65535 + 4294967295, no overflow. */
    content_type_len = get_u16(buf + OFF_CONTENT_TYPE_LEN);
    body_len = get_u32(buf + OFF_BODY_LEN);
    expected = (uint64_t)HEADER_LEN + content_type_len + body_len;
    if (expected != (uint64_t)len)
        return JG_ENTRY_TRUNCATED;

    if (jg_crc32c(buf + CHECKED_FROM, len - CHECKED_FROM) !=
        get_u32(buf + OFF_CHECKSUM))
        return JG_ENTRY_BAD_CHECKSUM;

    out->stored_at = (int64_t)get_u64(buf + OFF_STORED_AT);
    out->http_status = get_u16(buf + OFF_HTTP_STATUS);
    out->content_type = (const char *)buf + HEADER_LEN;
    out->content_type_len = content_type_len;
    out->body = out->content_type + content_type_len;
    out->body_len = body_len;
    memcpy(out->etag, buf + OFF_ETAG, JG_ENTRY_ETAG_LEN);
    memcpy(out->owner, buf + OFF_OWNER, JG_ENTRY_OWNER_LEN);
    return JG_ENTRY_OK;
}

void
jg_entry_format_etag(const struct jg_entry *entry,
                     char out[JG_ENTRY_ETAG_STR_LEN])
{
    static const char digits[] = "0123456789abcdef";
    size_t n = 0;
    size_t i;

    out[n++] = '"';
    for (i = 0; i < JG_ENTRY_ETAG_LEN; i++) {
        out[n++] = digits[entry->etag[i] >> 4];
        out[n++] = digits[entry->etag[i] & 0x0f];
    }
    out[n++] = '"';
    out[n] = '\0';
}

const char *
jg_entry_status_name(enum jg_entry_status status)
{
    if ((size_t)status >= JG_ARRAY_LEN(status_names))
        return "unknown";
    return status_names[status];
}
