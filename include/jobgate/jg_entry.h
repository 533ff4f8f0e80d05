/*
 * The on-disk format of one cache entry: a fixed versioned header, then the
 * content type, then the body byte for byte. A CRC-32C over everything after
 * the checksum field detects torn or corrupted values; a strong ETag derived
 * from the body with SHA-256 is computed once at encode time.
 */
#ifndef JOBGATE_JG_ENTRY_H
#define JOBGATE_JG_ENTRY_H

#include <stddef.h>
#include <stdint.h>

#define JG_ENTRY_VERSION 1
#define JG_ENTRY_ETAG_LEN 8
#define JG_ENTRY_OWNER_LEN 16
/* The ETag header value: '"' + 16 hex digits + '"' + NUL. */
#define JG_ENTRY_ETAG_STR_LEN 19
/* The header stores the content type length in 16 bits, the body's in 32. */
#define JG_ENTRY_MAX_CONTENT_TYPE_LEN UINT16_MAX
#define JG_ENTRY_MAX_BODY_LEN UINT32_MAX

/* A decoded entry. Pointers refer into the buffer it was decoded from. */
struct jg_entry {
    int64_t stored_at;      /* seconds since the epoch */
    uint16_t http_status;
    const char *content_type;
    size_t content_type_len;
    const char *body;
    size_t body_len;
    uint8_t etag[JG_ENTRY_ETAG_LEN];
    /*
     * With share_scope = credential, a keyed tag of the credential that
     * fetched the entry, which alone may be served it; zeros otherwise.
     */
    uint8_t owner[JG_ENTRY_OWNER_LEN];
};

enum jg_entry_status {
    JG_ENTRY_OK = 0,
    JG_ENTRY_TRUNCATED,   /* size differs from what its lengths require */
    JG_ENTRY_BAD_VERSION, /* written by another format version */
    JG_ENTRY_BAD_CHECKSUM,
};

/*
 * Bytes needed to encode an entry with these lengths, or 0 when a length
 * is above its maximum and the entry cannot be encoded.
 */
size_t jg_entry_encoded_size(size_t content_type_len, size_t body_len);

/*
 * Encode entry into out, which has jg_entry_encoded_size() bytes. The etag
 * field of entry is ignored: it is computed from the body and also written
 * back into entry. Lengths for which jg_entry_encoded_size() returns 0
 * abort the process.
 */
void jg_entry_encode(uint8_t *out, struct jg_entry *entry);

/* Decode and verify buf[0..len); on JG_ENTRY_OK out points into buf. */
enum jg_entry_status jg_entry_decode(const uint8_t *buf, size_t len,
                                     struct jg_entry *out);

/* Write the quoted strong ETag of entry, with a NUL, into out. */
void jg_entry_format_etag(const struct jg_entry *entry,
                          char out[JG_ENTRY_ETAG_STR_LEN]);

const char *jg_entry_status_name(enum jg_entry_status status);

/* CRC-32C (Castagnoli) of data[0..len), as used for the entry checksum. */
uint32_t jg_crc32c(const void *data, size_t len);

#endif
