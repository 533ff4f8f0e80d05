/*
 * Credentials and the principal table.
 *
 * A credential is the first of the Galileo-API-Key, Splunk-AO-API-Key and
 * Authorization: Bearer headers. jobgate never keeps it: it keeps an
 * HMAC-SHA-256 of it under a key drawn at start, so a table dump or a core
 * file does not reveal credentials and hashes do not match across restarts.
 *
 * The table maps such a hash to the organizations the upstream has proven it
 * may read, each with an expiry of auth_ttl seconds from the proof.
 */
#ifndef JOBGATE_JG_PRINCIPAL_H
#define JOBGATE_JG_PRINCIPAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobgate/jg_uuid.h"

#define JG_CRED_HASH_LEN 32
/* The short fingerprint that logs may show: 8 hex digits and a NUL. */
#define JG_CRED_FINGERPRINT_LEN 9
/* Organizations remembered per credential; more are rare and the oldest
 * proof is dropped. */
#define JG_PRINCIPAL_MAX_ORGS 4

enum jg_cred_source {
    JG_CRED_NONE = 0,
    JG_CRED_GALILEO_KEY,
    JG_CRED_SPLUNK_KEY,
    JG_CRED_BEARER,
};

/*
 * Pick the credential from the three header values (each NULL when the
 * header is absent). Galileo-API-Key wins over Splunk-AO-API-Key, which wins
 * over Authorization. Spaces and tabs around every value are trimmed, and an
 * API-key header that is empty after trimming counts as absent.
 * Authorization must be the Bearer scheme (any case), one or more spaces or
 * tabs, and a non-empty token; anything else, such as Basic, gives
 * JG_CRED_NONE. On a result other than JG_CRED_NONE, *token and *len give
 * the credential inside the header value; otherwise they are NULL and 0.
 */
enum jg_cred_source jg_credential_extract(const char *galileo_key,
                                          const char *splunk_key,
                                          const char *authorization,
                                          const char **token, size_t *len);

/*
 * The table is not thread-safe, not even for lookups and hashing, because
 * it reuses one MAC context: use one table per event loop. Learning,
 * forgetting and lookups never allocate memory; hashing allocates only
 * inside libcrypto.
 */
struct jg_principals;

/*
 * Create a table of at most max_entries credentials (1 to 2^30) with a new
 * random hash key; a proof learned at time t is valid while now < t + ttl.
 * Times and ttl are in one monotonic unit of the caller's choice.
 * Aborts with a message when the kernel or OpenSSL cannot provide the key.
 */
struct jg_principals *jg_principals_create(size_t max_entries,
                                           uint64_t ttl);
/* The same with a given HMAC key, for tests that check the hash. */
struct jg_principals *jg_principals_create_keyed(
    size_t max_entries, uint64_t ttl, const uint8_t key[JG_CRED_HASH_LEN]);
void jg_principals_free(struct jg_principals *table);

/*
 * Keyed hash of a credential and the header that carried it. The header
 * counts because the upstream checks an API key and a Bearer token
 * differently: the same string proven in one header proves nothing in the
 * other.
 */
void jg_principals_hash(const struct jg_principals *table,
                        enum jg_cred_source source, const char *token,
                        size_t len, uint8_t out[JG_CRED_HASH_LEN]);

/* The first four bytes of a hash in hex, the only form logs may show. */
void jg_principals_fingerprint(const uint8_t hash[JG_CRED_HASH_LEN],
                               char out[JG_CRED_FINGERPRINT_LEN]);

/*
 * Record that the credential may read org, at monotonic time now. A known
 * org gets a new expiry. A new org beyond JG_PRINCIPAL_MAX_ORGS drops the
 * credential's oldest proof. A new credential in a full table evicts the
 * least recently learned credential, which is an expired one if any is.
 */
void jg_principals_learn(struct jg_principals *table,
                         const uint8_t hash[JG_CRED_HASH_LEN],
                         const uint8_t org[JG_UUID_LEN], uint64_t now);

/* Forget every proof of the credential, as after an upstream 401. */
void jg_principals_forget(struct jg_principals *table,
                          const uint8_t hash[JG_CRED_HASH_LEN]);

/*
 * Copy into orgs up to max organizations proven for the credential and not
 * expired at now, newest proof first; returns how many were copied.
 */
size_t jg_principals_orgs(struct jg_principals *table,
                          const uint8_t hash[JG_CRED_HASH_LEN], uint64_t now,
                          uint8_t orgs[][JG_UUID_LEN], size_t max);

/* Whether the credential has a proof for org that is not expired at now. */
bool jg_principals_allows(struct jg_principals *table,
                          const uint8_t hash[JG_CRED_HASH_LEN],
                          const uint8_t org[JG_UUID_LEN], uint64_t now);

struct jg_principal_stats {
    uint64_t entries;   /* credentials in the table now */
    uint64_t learned;
    uint64_t forgotten; /* by an upstream 401 */
    uint64_t evicted;   /* dropped because the table was full */
};
const struct jg_principal_stats *jg_principals_stats(
    const struct jg_principals *table);

#endif
