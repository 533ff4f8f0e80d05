/*
 * Credential extraction and the principal table: which organizations the
 * upstream has recently proven each credential may read.
 *
 * The table never stores a credential, only its HMAC-SHA-256 under a
 * 32-byte key drawn from getrandom(2) when the table is made. That hash is
 * uniformly distributed, so its first eight bytes serve directly as the
 * hash-table hash. Buckets use open addressing with linear probing and
 * backward-shift deletion (no tombstones), kept at most half full so that
 * a probe always reaches an empty bucket. Entries live in one array
 * allocated at creation, so learn, forget and lookups never allocate.
 *
 * A doubly linked list orders the credentials by their last learn. When the
 * table is full, the head of that list is evicted. Its newest proof is
 * older than any other credential's newest proof. So if some credential has
 * only expired proofs, the head is such a credential, and otherwise it is
 * the credential proven longest ago.
 *
 * Times are monotonic, in the caller's unit (jobgate uses milliseconds, so
 * that a proof lives auth_ttl seconds to the millisecond). A proof learned
 * at t is valid while now < t + ttl, so it is expired from t + ttl on.
 *
 * One table serves every worker thread of a process, behind a read-write
 * lock. Hashing needs no lock: the pad states never change after creation.
 */
#include "jobgate/jg_principal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/*
 * The SHA256_* functions are deprecated in OpenSSL 3.0 in favour of EVP,
 * but they are still provided, and they let the keyed pad states be
 * computed once and copied, which EVP_MAC cannot.
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "jobgate/jg_util.h"

#define HMAC_KEY_LEN 32
/* End of a list or no entry. */
#define NIL UINT32_MAX
/* Maximum number of entries: indices are 32 bits wide, and the bucket
 * array has twice as many slots. */
#define MAX_TABLE_ENTRIES ((size_t)1 << 30)

struct proof {
    uint8_t org[JG_UUID_LEN];
    uint64_t expires; /* valid while now < expires */
};

struct principal {
    uint8_t hash[JG_CRED_HASH_LEN];
    uint32_t older; /* neighbours in the learn order, or NIL */
    uint32_t newer; /* also the free-list link of an unused slot */
    uint32_t proof_count;
    /* Ordered by learn time, oldest first, so the first is dropped when a
     * new organization arrives and the array is full. */
    struct proof proofs[JG_PRINCIPAL_MAX_ORGS];
};

struct jg_principals {
    /*
     * Every worker thread reads the table on each hit; learn and forget,
     * rare by comparison, take it for writing.
     */
    pthread_rwlock_t lock;
    /*
     * SHA-256 states after the key's inner and outer pad blocks (RFC 2104),
     * computed once at creation. A hash copies them and absorbs only the
     * credential and the inner digest: two compressions for a short
     * credential, without the allocations and cleansing that EVP_MAC does
     * on every call, which cost more than the hash itself on the hit path.
     */
    SHA256_CTX inner;
    SHA256_CTX outer;
    uint64_t ttl;
    size_t max_entries;
    struct principal *entries; /* max_entries slots */
    uint32_t never_used;       /* slots from here on were never taken */
    uint32_t free_head;        /* released slots, chained through newer */
    uint32_t oldest;           /* least recently learned, evicted first */
    uint32_t newest;
    uint32_t *buckets; /* entry index + 1, or 0 for an empty bucket */
    size_t bucket_mask;
    struct jg_principal_stats stats;
};

static bool
is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Trim spaces and tabs. Returns false when value is absent or only blanks. */
static bool
trimmed(const char *value, const char **start, size_t *len)
{
    const char *end;

    if (value == NULL)
        return false;
    while (is_blank(*value))
        value++;
    end = value + strlen(value);
    while (end > value && is_blank(end[-1]))
        end--;
    *start = value;
    *len = (size_t)(end - value);
    return *len > 0;
}

enum jg_cred_source
jg_credential_extract(const char *galileo_key, const char *splunk_key,
                      const char *authorization, const char **token,
                      size_t *len)
{
    static const char scheme[] = "bearer";
    const size_t scheme_len = sizeof(scheme) - 1;
    const char *start;
    size_t n;

    *token = NULL;
    *len = 0;

    if (trimmed(galileo_key, token, len))
        return JG_CRED_GALILEO_KEY;
    if (trimmed(splunk_key, token, len))
        return JG_CRED_SPLUNK_KEY;

    /* "Bearer", then at least one blank, then the token; trimming the
     * whole value leaves a non-blank token whenever a blank follows. */
    if (!trimmed(authorization, &start, &n) || n <= scheme_len ||
        jg_ascii_casecmp_n(start, scheme_len, scheme) != 0 ||
        !is_blank(start[scheme_len])) {
        *token = NULL;
        *len = 0;
        return JG_CRED_NONE;
    }
    start += scheme_len;
    n -= scheme_len;
    while (is_blank(*start)) {
        start++;
        n--;
    }
    *token = start;
    *len = n;
    return JG_CRED_BEARER;
}

static void
fatal(const char *what)
{
    fprintf(stderr, "jobgate: %s\n", what);
    abort();
}

static void
random_key(uint8_t key[HMAC_KEY_LEN])
{
    size_t got = 0;

    /* Requests of at most 256 bytes are not cut short once the kernel's
     * pool is ready, but a signal may interrupt the wait for the pool
     * (getrandom(2)). */
    while (got < HMAC_KEY_LEN) {
        ssize_t n = getrandom(key + got, HMAC_KEY_LEN - got, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fatal("getrandom() failed; a Linux 3.17 or later kernel is "
                  "required for the credential hash key");
        got += (size_t)n;
    }
}

/* Absorb the key's inner and outer pad blocks, once. */
static void
key_hmac(struct jg_principals *table, const uint8_t key[HMAC_KEY_LEN])
{
    uint8_t pad[SHA256_CBLOCK];
    size_t i;

    memset(pad, 0x36, sizeof(pad));
    for (i = 0; i < HMAC_KEY_LEN; i++)
        pad[i] ^= key[i];
    SHA256_Init(&table->inner);
    SHA256_Update(&table->inner, pad, sizeof(pad));

    memset(pad, 0x5c, sizeof(pad));
    for (i = 0; i < HMAC_KEY_LEN; i++)
        pad[i] ^= key[i];
    SHA256_Init(&table->outer);
    SHA256_Update(&table->outer, pad, sizeof(pad));

    OPENSSL_cleanse(pad, sizeof(pad));
}

struct jg_principals *
jg_principals_create(size_t max_entries, uint64_t ttl)
{
    uint8_t key[HMAC_KEY_LEN];
    struct jg_principals *table;

    random_key(key);
    table = jg_principals_create_keyed(max_entries, ttl, key);
    OPENSSL_cleanse(key, sizeof(key));
    return table;
}

struct jg_principals *
jg_principals_create_keyed(size_t max_entries, uint64_t ttl,
                           const uint8_t key[JG_CRED_HASH_LEN])
{
    struct jg_principals *table;
    size_t buckets = 8;

    if (max_entries == 0 || max_entries > MAX_TABLE_ENTRIES)
        fatal("principal table size out of range");

    /* At most half full, so every probe ends at an empty bucket soon. */
    while (buckets < max_entries * 2)
        buckets *= 2;

    table = jg_calloc(1, sizeof(*table));
    key_hmac(table, key);
    table->ttl = ttl;
    table->max_entries = max_entries;
    /* With glibc, a large calloc() usually gets fresh zero pages from the
     * kernel, so a mostly empty table costs address space rather than
     * resident memory. */
    table->entries = jg_calloc(max_entries, sizeof(*table->entries));
    table->buckets = jg_calloc(buckets, sizeof(*table->buckets));
    table->bucket_mask = buckets - 1;
    table->never_used = 0;
    table->free_head = NIL;
    table->oldest = NIL;
    table->newest = NIL;
    if (pthread_rwlock_init(&table->lock, NULL) != 0)
        fatal("cannot create the principal table lock");
    return table;
}

void
jg_principals_free(struct jg_principals *table)
{
    if (table == NULL)
        return;
    OPENSSL_cleanse(&table->inner, sizeof(table->inner));
    OPENSSL_cleanse(&table->outer, sizeof(table->outer));
    /* Hashes are not secrets, but proofs show which credential may read
     * which organization. */
    OPENSSL_cleanse(table->entries,
                    table->max_entries * sizeof(*table->entries));
    jg_free(table->entries);
    jg_free(table->buckets);
    pthread_rwlock_destroy(&table->lock);
    jg_free(table);
}

void
jg_principals_hash(const struct jg_principals *table,
                   enum jg_cred_source source, const char *token, size_t len,
                   uint8_t out[JG_CRED_HASH_LEN])
{
    unsigned char source_byte = (unsigned char)source;
    uint8_t inner_digest[SHA256_DIGEST_LENGTH];
    SHA256_CTX ctx = table->inner;

    SHA256_Update(&ctx, &source_byte, 1);
    SHA256_Update(&ctx, token, len);
    SHA256_Final(inner_digest, &ctx);

    ctx = table->outer;
    SHA256_Update(&ctx, inner_digest, sizeof(inner_digest));
    SHA256_Final(out, &ctx);
}

void
jg_principals_fingerprint(const uint8_t hash[JG_CRED_HASH_LEN],
                          char out[JG_CRED_FINGERPRINT_LEN])
{
    snprintf(out, JG_CRED_FINGERPRINT_LEN, "%02x%02x%02x%02x", hash[0],
             hash[1], hash[2], hash[3]);
}

static size_t
home_bucket(const struct jg_principals *table,
            const uint8_t hash[JG_CRED_HASH_LEN])
{
    uint64_t h;

    memcpy(&h, hash, sizeof(h));
    return (size_t)h & table->bucket_mask;
}

/*
 * Return the bucket that contains hash, with *found set, or the empty bucket
 * where it would go. The loop ends because at least half the buckets are
 * empty.
 */
static size_t
probe(const struct jg_principals *table, const uint8_t hash[JG_CRED_HASH_LEN],
      bool *found)
{
    size_t b = home_bucket(table, hash);

    for (;;) {
        uint32_t v = table->buckets[b];

        if (v == 0) {
            *found = false;
            return b;
        }
        if (memcmp(table->entries[v - 1].hash, hash, JG_CRED_HASH_LEN) == 0) {
            *found = true;
            return b;
        }
        b = (b + 1) & table->bucket_mask;
    }
}

/*
 * Empty bucket hole and pull later entries of its cluster back into it,
 * so that every entry stays reachable from its home bucket without
 * tombstones. An entry may move into the hole only when its home bucket is
 * not cyclically after the hole.
 */
static void
delete_bucket(struct jg_principals *table, size_t hole)
{
    size_t mask = table->bucket_mask;
    size_t next = hole;

    for (;;) {
        uint32_t v;
        size_t home;

        next = (next + 1) & mask;
        v = table->buckets[next];
        if (v == 0)
            break;
        home = home_bucket(table, table->entries[v - 1].hash);
        if (((next - home) & mask) >= ((next - hole) & mask)) {
            table->buckets[hole] = v;
            hole = next;
        }
    }
    table->buckets[hole] = 0;
}

static void
order_unlink(struct jg_principals *table, uint32_t i)
{
    struct principal *p = &table->entries[i];

    if (p->older != NIL)
        table->entries[p->older].newer = p->newer;
    else
        table->oldest = p->newer;
    if (p->newer != NIL)
        table->entries[p->newer].older = p->older;
    else
        table->newest = p->older;
    p->older = NIL;
    p->newer = NIL;
}

static void
order_append(struct jg_principals *table, uint32_t i)
{
    struct principal *p = &table->entries[i];

    p->older = table->newest;
    p->newer = NIL;
    if (table->newest != NIL)
        table->entries[table->newest].newer = i;
    else
        table->oldest = i;
    table->newest = i;
}

static uint32_t
take_slot(struct jg_principals *table)
{
    uint32_t i;

    if (table->free_head != NIL) {
        i = table->free_head;
        table->free_head = table->entries[i].newer;
        return i;
    }
    return table->never_used++;
}

/* Remove the entry in bucket b from the table. */
static void
remove_at(struct jg_principals *table, size_t b)
{
    uint32_t i = table->buckets[b] - 1;
    struct principal *p = &table->entries[i];

    order_unlink(table, i);
    delete_bucket(table, b);
    memset(p, 0, sizeof(*p));
    p->newer = table->free_head;
    table->free_head = i;
    JG_COUNT_SUB(table->stats.entries, 1);
}

static void
evict_oldest(struct jg_principals *table)
{
    bool found;
    size_t b = probe(table, table->entries[table->oldest].hash, &found);

    remove_at(table, b);
    JG_COUNT(table->stats.evicted);
}

/* Record org with a new expiry, as the newest proof of p. */
static void
add_proof(struct principal *p, const uint8_t org[JG_UUID_LEN],
          uint64_t expires)
{
    uint32_t k;

    for (k = 0; k < p->proof_count; k++) {
        if (memcmp(p->proofs[k].org, org, JG_UUID_LEN) == 0)
            break;
    }
    /* A known org is moved to the end; a new one displaces the oldest
     * proof when the array is full. */
    if (k == p->proof_count && p->proof_count == JG_PRINCIPAL_MAX_ORGS)
        k = 0;
    if (k < p->proof_count) {
        memmove(&p->proofs[k], &p->proofs[k + 1],
                (p->proof_count - k - 1) * sizeof(p->proofs[0]));
        p->proof_count--;
    }

    memcpy(p->proofs[p->proof_count].org, org, JG_UUID_LEN);
    p->proofs[p->proof_count].expires = expires;
    p->proof_count++;
}

void
jg_principals_learn(struct jg_principals *table,
                    const uint8_t hash[JG_CRED_HASH_LEN],
                    const uint8_t org[JG_UUID_LEN], uint64_t now)
{
    uint64_t expires = now + table->ttl;
    bool found;
    size_t b;
    uint32_t i;

    if (expires < now)
        expires = UINT64_MAX;
    pthread_rwlock_wrlock(&table->lock);
    b = probe(table, hash, &found);
    JG_COUNT(table->stats.learned);

    if (found) {
        i = table->buckets[b] - 1;
        order_unlink(table, i);
    } else {
        if (table->stats.entries == table->max_entries) {
            evict_oldest(table);
            /* Deletion may have moved the empty bucket found above. */
            b = probe(table, hash, &found);
        }
        i = take_slot(table);
        memcpy(table->entries[i].hash, hash, JG_CRED_HASH_LEN);
        table->entries[i].proof_count = 0;
        table->buckets[b] = i + 1;
        JG_COUNT(table->stats.entries);
    }

    order_append(table, i);
    add_proof(&table->entries[i], org, expires);
    pthread_rwlock_unlock(&table->lock);
}

void
jg_principals_forget(struct jg_principals *table,
                     const uint8_t hash[JG_CRED_HASH_LEN])
{
    bool found;
    size_t b;

    pthread_rwlock_wrlock(&table->lock);
    b = probe(table, hash, &found);
    if (found) {
        remove_at(table, b);
        JG_COUNT(table->stats.forgotten);
    }
    pthread_rwlock_unlock(&table->lock);
}

/* The entry of hash, or NULL. */
static const struct principal *
lookup(const struct jg_principals *table,
       const uint8_t hash[JG_CRED_HASH_LEN])
{
    bool found;
    size_t b = probe(table, hash, &found);

    return found ? &table->entries[table->buckets[b] - 1] : NULL;
}

size_t
jg_principals_orgs(struct jg_principals *table,
                   const uint8_t hash[JG_CRED_HASH_LEN], uint64_t now,
                   uint8_t orgs[][JG_UUID_LEN], size_t max)
{
    const struct principal *p;
    size_t copied = 0;
    uint32_t k;

    pthread_rwlock_rdlock(&table->lock);
    p = lookup(table, hash);
    /* Newest first: the most recent proof is the likeliest to be used. */
    for (k = p != NULL ? p->proof_count : 0; k > 0 && copied < max; k--) {
        const struct proof *proof = &p->proofs[k - 1];

        if (now < proof->expires)
            memcpy(orgs[copied++], proof->org, JG_UUID_LEN);
    }
    pthread_rwlock_unlock(&table->lock);
    return copied;
}

bool
jg_principals_allows(struct jg_principals *table,
                     const uint8_t hash[JG_CRED_HASH_LEN],
                     const uint8_t org[JG_UUID_LEN], uint64_t now)
{
    const struct principal *p;
    bool allowed = false;
    uint32_t k;

    pthread_rwlock_rdlock(&table->lock);
    p = lookup(table, hash);
    for (k = 0; p != NULL && k < p->proof_count; k++) {
        if (memcmp(p->proofs[k].org, org, JG_UUID_LEN) == 0) {
            allowed = now < p->proofs[k].expires;
            break;
        }
    }
    pthread_rwlock_unlock(&table->lock);
    return allowed;
}

const struct jg_principal_stats *
jg_principals_stats(const struct jg_principals *table)
{
    return &table->stats;
}
