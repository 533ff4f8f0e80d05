/*
 * UUID parsing as the upstream (FastAPI with a pydantic v2 UUID4 path
 * parameter) parses a job id, so that every spelling the upstream accepts
 * maps to the same 16 bytes and every spelling it rejects is rejected here
 * with the same error type.
 */
#ifndef JOBGATE_JG_UUID_H
#define JOBGATE_JG_UUID_H

#include <stddef.h>
#include <stdint.h>

#define JG_UUID_LEN 16
/* 36 characters of the hyphenated form plus the NUL. */
#define JG_UUID_STR_LEN 37

enum jg_uuid_status {
    JG_UUID_OK = 0,
    /* Not a UUID at all: the upstream's "uuid_parsing" error. */
    JG_UUID_INVALID,
    /* A UUID, but not version 4 with an RFC 4122 variant: "uuid_version". */
    JG_UUID_NOT_V4,
};

/*
 * Parse a decoded UUID string of len bytes (no NUL needed). Accepted forms:
 * hyphenated 8-4-4-4-12 in any case, 32 hex digits, the hyphenated form in
 * braces, and "urn:uuid:" (lower case) followed by the hyphenated form.
 * Anything else, including surrounding spaces, is JG_UUID_INVALID.
 * On JG_UUID_OK and JG_UUID_NOT_V4, out holds the 16 bytes.
 */
enum jg_uuid_status jg_uuid_parse(const char *s, size_t len,
                                  uint8_t out[JG_UUID_LEN]);

/*
 * Parse a raw, still percent-encoded path segment: escapes are decoded
 * first (so "%7B...%7D" is the braced form), and a segment whose decoding
 * holds a NUL, a '/' or a malformed escape is JG_UUID_INVALID.
 */
enum jg_uuid_status jg_uuid_parse_segment(const char *segment, size_t len,
                                          uint8_t out[JG_UUID_LEN]);

/* Write the lower-case hyphenated form and a NUL into out. */
void jg_uuid_format(const uint8_t uuid[JG_UUID_LEN],
                    char out[JG_UUID_STR_LEN]);

#endif
