/*
 * Unit tests of credential extraction and the principal table. They cover
 * header precedence and Bearer parsing, the keyed hash, proof expiry at the
 * exact ttl boundary, the per-credential org limit and eviction from a full
 * table. A randomised run compares the table with a simple reference model.
 *
 * The randomised test prints its seed; set JOBGATE_TEST_SEED to replay it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "jobgate/jg_principal.h"

#define TTL 60

static void
make_org(uint8_t org[JG_UUID_LEN], unsigned n)
{
    memset(org, 0, JG_UUID_LEN);
    org[0] = 0x0f;
    org[15] = (uint8_t)n;
    org[14] = (uint8_t)(n >> 8);
}

static void
hash_token(const struct jg_principals *table, const char *token,
           uint8_t out[JG_CRED_HASH_LEN])
{
    jg_principals_hash(table, JG_CRED_GALILEO_KEY, token, strlen(token), out);
}

static void
test_extract_cases(void **state)
{
    static const struct {
        const char *galileo;
        const char *splunk;
        const char *authorization;
        enum jg_cred_source source;
        const char *token;
    } cases[] = {
        {NULL, NULL, NULL, JG_CRED_NONE, NULL},
        {"key-g", NULL, NULL, JG_CRED_GALILEO_KEY, "key-g"},
        {" \tkey-g \t", NULL, NULL, JG_CRED_GALILEO_KEY, "key-g"},
        {NULL, "key-s", NULL, JG_CRED_SPLUNK_KEY, "key-s"},
        {"key-g", "key-s", "Bearer tok", JG_CRED_GALILEO_KEY, "key-g"},
        {NULL, "key-s", "Bearer tok", JG_CRED_SPLUNK_KEY, "key-s"},
        {"key-g", NULL, "Bearer tok", JG_CRED_GALILEO_KEY, "key-g"},
        /* An empty API-key header counts as absent. */
        {"", NULL, "Bearer tok", JG_CRED_BEARER, "tok"},
        {" \t ", "", "Bearer tok", JG_CRED_BEARER, "tok"},
        {"", "key-s", NULL, JG_CRED_SPLUNK_KEY, "key-s"},
        {"", "", NULL, JG_CRED_NONE, NULL},
        {NULL, NULL, "Bearer tok", JG_CRED_BEARER, "tok"},
        {NULL, NULL, "bearer   tok  ", JG_CRED_BEARER, "tok"},
        {NULL, NULL, "BEARER\ttok\t", JG_CRED_BEARER, "tok"},
        {NULL, NULL, "  BeArEr  eyJ.a.b  ", JG_CRED_BEARER, "eyJ.a.b"},
        {NULL, NULL, "Bearer", JG_CRED_NONE, NULL},
        {NULL, NULL, "Bearer ", JG_CRED_NONE, NULL},
        {NULL, NULL, "Bearer \t ", JG_CRED_NONE, NULL},
        {NULL, NULL, "Bearertok", JG_CRED_NONE, NULL},
        {NULL, NULL, "Basic xyz", JG_CRED_NONE, NULL},
        {NULL, NULL, "Bear tok", JG_CRED_NONE, NULL},
        {NULL, NULL, "", JG_CRED_NONE, NULL},
        {NULL, NULL, "tok", JG_CRED_NONE, NULL},
        {"", "", "Basic xyz", JG_CRED_NONE, NULL},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *token = "unset";
        size_t len = 99;
        enum jg_cred_source source;

        source = jg_credential_extract(cases[i].galileo, cases[i].splunk,
                                       cases[i].authorization, &token, &len);
        if (source != cases[i].source)
            fail_msg("case %zu: source %d, expected %d", i, (int)source,
                     (int)cases[i].source);
        if (cases[i].token == NULL) {
            assert_null(token);
            assert_int_equal(len, 0);
            continue;
        }
        if (len != strlen(cases[i].token) ||
            memcmp(token, cases[i].token, len) != 0)
            fail_msg("case %zu: token \"%.*s\", expected \"%s\"", i,
                     (int)len, token, cases[i].token);
    }
}

/* The token points into the header value; it is not a copy. */
static void
test_extract_points_into_header(void **state)
{
    const char *header = "Bearer  abc ";
    const char *token = NULL;
    size_t len = 0;

    (void)state;
    assert_int_equal(jg_credential_extract(NULL, NULL, header, &token, &len),
                     JG_CRED_BEARER);
    assert_ptr_equal(token, header + 8);
    assert_int_equal(len, 3);
}

static void
test_hash_keyed_per_table(void **state)
{
    struct jg_principals *a = jg_principals_create(16, TTL);
    struct jg_principals *b = jg_principals_create(16, TTL);
    uint8_t h1[JG_CRED_HASH_LEN];
    uint8_t h2[JG_CRED_HASH_LEN];
    uint8_t h3[JG_CRED_HASH_LEN];
    uint8_t hb[JG_CRED_HASH_LEN];
    uint8_t empty[JG_CRED_HASH_LEN];

    (void)state;
    hash_token(a, "token-one", h1);
    hash_token(a, "token-one", h2);
    assert_memory_equal(h1, h2, JG_CRED_HASH_LEN);

    hash_token(a, "token-two", h3);
    assert_memory_not_equal(h1, h3, JG_CRED_HASH_LEN);

    /* Only len bytes count, not what follows them. */
    jg_principals_hash(a, JG_CRED_GALILEO_KEY, "token-one-and-more", 9, h2);
    assert_memory_equal(h1, h2, JG_CRED_HASH_LEN);

    /* Each table draws its own key. */
    hash_token(b, "token-one", hb);
    assert_memory_not_equal(h1, hb, JG_CRED_HASH_LEN);

    jg_principals_hash(a, JG_CRED_GALILEO_KEY, "", 0, empty);
    assert_memory_not_equal(empty, h1, JG_CRED_HASH_LEN);

    /* The same string in another header is another credential. */
    jg_principals_hash(a, JG_CRED_BEARER, "token-one", 9, h3);
    assert_memory_not_equal(h1, h3, JG_CRED_HASH_LEN);

    jg_principals_free(a);
    jg_principals_free(b);
}

/* The hash is HMAC-SHA-256 over the source byte and the credential. */
static void
test_hash_is_standard_hmac(void **state)
{
    uint8_t key[JG_CRED_HASH_LEN];
    uint8_t ours[JG_CRED_HASH_LEN];
    unsigned char expected[EVP_MAX_MD_SIZE];
    unsigned char message[200];
    unsigned int expected_len = 0;
    struct jg_principals *table;
    size_t len;

    (void)state;
    for (len = 0; len < sizeof(key); len++)
        key[len] = (uint8_t)(len * 7 + 1);
    table = jg_principals_create_keyed(8, 60, key);

    /* Lengths around the SHA-256 block size exercise the padding. */
    for (len = 0; len < sizeof(message) - 1; len += 13) {
        memset(message + 1, 'k', len);
        message[0] = (unsigned char)JG_CRED_BEARER;
        jg_principals_hash(table, JG_CRED_BEARER, (const char *)message + 1,
                           len, ours);
        HMAC(EVP_sha256(), key, sizeof(key), message, len + 1, expected,
             &expected_len);
        assert_int_equal(expected_len, JG_CRED_HASH_LEN);
        assert_memory_equal(ours, expected, JG_CRED_HASH_LEN);
    }
    jg_principals_free(table);
}

static void
test_fingerprint_first_four_bytes(void **state)
{
    uint8_t hash[JG_CRED_HASH_LEN];
    char out[JG_CRED_FINGERPRINT_LEN];

    (void)state;
    memset(hash, 0xff, sizeof(hash));
    hash[0] = 0xde;
    hash[1] = 0xad;
    hash[2] = 0x0b;
    hash[3] = 0x01;
    memset(out, 'x', sizeof(out));
    jg_principals_fingerprint(hash, out);
    assert_string_equal(out, "dead0b01");
}

static void
test_learn_expires_at_ttl(void **state)
{
    struct jg_principals *table = jg_principals_create(16, TTL);
    uint8_t cred[JG_CRED_HASH_LEN];
    uint8_t other[JG_CRED_HASH_LEN];
    uint8_t org[JG_UUID_LEN];
    uint8_t org2[JG_UUID_LEN];
    uint8_t found[JG_PRINCIPAL_MAX_ORGS][JG_UUID_LEN];

    (void)state;
    hash_token(table, "alice", cred);
    hash_token(table, "bob", other);
    make_org(org, 1);
    make_org(org2, 2);

    assert_false(jg_principals_allows(table, cred, org, 1000));
    assert_int_equal(jg_principals_orgs(table, cred, 1000, found, 4), 0);

    jg_principals_learn(table, cred, org, 1000);
    assert_true(jg_principals_allows(table, cred, org, 1000));
    assert_true(jg_principals_allows(table, cred, org, 1000 + TTL - 1));
    /* Expired from learned + ttl on. */
    assert_false(jg_principals_allows(table, cred, org, 1000 + TTL));
    assert_false(jg_principals_allows(table, cred, org2, 1000));
    assert_false(jg_principals_allows(table, other, org, 1000));

    assert_int_equal(jg_principals_orgs(table, cred, 1000 + TTL - 1, found,
                                        4), 1);
    assert_memory_equal(found[0], org, JG_UUID_LEN);
    assert_int_equal(jg_principals_orgs(table, cred, 1000 + TTL, found, 4),
                     0);

    /* A new proof of the same org moves its expiry. */
    jg_principals_learn(table, cred, org, 1030);
    assert_true(jg_principals_allows(table, cred, org, 1030 + TTL - 1));
    assert_false(jg_principals_allows(table, cred, org, 1030 + TTL));

    /* An expired entry comes back with the next proof. */
    jg_principals_learn(table, cred, org2, 5000);
    assert_false(jg_principals_allows(table, cred, org, 5000));
    assert_true(jg_principals_allows(table, cred, org2, 5000));
    assert_int_equal(jg_principals_orgs(table, cred, 5000, found, 4), 1);
    assert_memory_equal(found[0], org2, JG_UUID_LEN);

    assert_int_equal(jg_principals_stats(table)->entries, 1);
    assert_int_equal(jg_principals_stats(table)->learned, 3);
    jg_principals_free(table);
}

static void
test_ttl_saturates_near_max_time(void **state)
{
    struct jg_principals *table = jg_principals_create(4, TTL);
    uint8_t cred[JG_CRED_HASH_LEN];
    uint8_t org[JG_UUID_LEN];

    (void)state;
    hash_token(table, "late", cred);
    make_org(org, 1);
    jg_principals_learn(table, cred, org, UINT64_MAX - 10);
    assert_true(jg_principals_allows(table, cred, org, UINT64_MAX - 1));
    jg_principals_free(table);
}

static void
test_forget_drops_credential(void **state)
{
    struct jg_principals *table = jg_principals_create(16, TTL);
    uint8_t alice[JG_CRED_HASH_LEN];
    uint8_t bob[JG_CRED_HASH_LEN];
    uint8_t stranger[JG_CRED_HASH_LEN];
    uint8_t org[JG_UUID_LEN];

    (void)state;
    hash_token(table, "alice", alice);
    hash_token(table, "bob", bob);
    hash_token(table, "stranger", stranger);
    make_org(org, 7);

    jg_principals_learn(table, alice, org, 10);
    jg_principals_learn(table, bob, org, 10);
    jg_principals_forget(table, alice);
    assert_false(jg_principals_allows(table, alice, org, 10));
    assert_true(jg_principals_allows(table, bob, org, 10));
    assert_int_equal(jg_principals_stats(table)->entries, 1);
    assert_int_equal(jg_principals_stats(table)->forgotten, 1);

    /* Forgetting an unknown credential changes nothing. */
    jg_principals_forget(table, stranger);
    jg_principals_forget(table, alice);
    assert_int_equal(jg_principals_stats(table)->entries, 1);
    assert_int_equal(jg_principals_stats(table)->forgotten, 1);

    /* The credential can be learned again. */
    jg_principals_learn(table, alice, org, 11);
    assert_true(jg_principals_allows(table, alice, org, 11));
    assert_int_equal(jg_principals_stats(table)->entries, 2);
    jg_principals_free(table);
}

static void
test_org_limit_drops_oldest_proof(void **state)
{
    struct jg_principals *table = jg_principals_create(16, TTL);
    uint8_t cred[JG_CRED_HASH_LEN];
    uint8_t orgs[JG_PRINCIPAL_MAX_ORGS + 2][JG_UUID_LEN];
    uint8_t found[JG_PRINCIPAL_MAX_ORGS + 2][JG_UUID_LEN];
    unsigned i;

    (void)state;
    hash_token(table, "multi-org", cred);
    for (i = 0; i < JG_PRINCIPAL_MAX_ORGS + 2; i++)
        make_org(orgs[i], 100 + i);

    for (i = 0; i < JG_PRINCIPAL_MAX_ORGS; i++)
        jg_principals_learn(table, cred, orgs[i], 10 + i);
    for (i = 0; i < JG_PRINCIPAL_MAX_ORGS; i++)
        assert_true(jg_principals_allows(table, cred, orgs[i], 20));

    /* One more org displaces the oldest proof, orgs[0]. */
    jg_principals_learn(table, cred, orgs[JG_PRINCIPAL_MAX_ORGS], 20);
    assert_false(jg_principals_allows(table, cred, orgs[0], 20));
    for (i = 1; i <= JG_PRINCIPAL_MAX_ORGS; i++)
        assert_true(jg_principals_allows(table, cred, orgs[i], 20));

    /* Refreshing orgs[1] makes orgs[2] the oldest, so it goes next. */
    jg_principals_learn(table, cred, orgs[1], 21);
    jg_principals_learn(table, cred, orgs[JG_PRINCIPAL_MAX_ORGS + 1], 22);
    assert_true(jg_principals_allows(table, cred, orgs[1], 22));
    assert_false(jg_principals_allows(table, cred, orgs[2], 22));
    assert_true(jg_principals_allows(table, cred, orgs[3], 22));

    /* Newest proof first, and max limits the copy. */
    assert_int_equal(jg_principals_orgs(table, cred, 22, found,
                                        JG_PRINCIPAL_MAX_ORGS + 2),
                     JG_PRINCIPAL_MAX_ORGS);
    assert_memory_equal(found[0], orgs[JG_PRINCIPAL_MAX_ORGS + 1],
                        JG_UUID_LEN);
    assert_memory_equal(found[1], orgs[1], JG_UUID_LEN);
    assert_int_equal(jg_principals_orgs(table, cred, 22, found, 2), 2);
    assert_memory_equal(found[0], orgs[JG_PRINCIPAL_MAX_ORGS + 1],
                        JG_UUID_LEN);
    assert_int_equal(jg_principals_orgs(table, cred, 22, found, 0), 0);

    assert_int_equal(jg_principals_stats(table)->entries, 1);
    jg_principals_free(table);
}

static void
test_full_table_evicts_one(void **state)
{
    enum { MAX = 8 };
    struct jg_principals *table = jg_principals_create(MAX, TTL);
    uint8_t creds[MAX + 1][JG_CRED_HASH_LEN];
    uint8_t org[JG_UUID_LEN];
    char token[32];
    unsigned i;

    (void)state;
    make_org(org, 1);
    for (i = 0; i < MAX + 1; i++) {
        snprintf(token, sizeof(token), "cred-%u", i);
        hash_token(table, token, creds[i]);
    }

    for (i = 0; i < MAX; i++)
        jg_principals_learn(table, creds[i], org, 100 + i);
    assert_int_equal(jg_principals_stats(table)->entries, MAX);
    assert_int_equal(jg_principals_stats(table)->evicted, 0);

    /* A refreshed credential is no longer the oldest: cred-1 is. */
    jg_principals_learn(table, creds[0], org, 110);
    jg_principals_learn(table, creds[MAX], org, 111);
    assert_int_equal(jg_principals_stats(table)->entries, MAX);
    assert_int_equal(jg_principals_stats(table)->evicted, 1);
    assert_false(jg_principals_allows(table, creds[1], org, 111));
    for (i = 0; i < MAX + 1; i++) {
        if (i != 1 && !jg_principals_allows(table, creds[i], org, 111))
            fail_msg("cred-%u lost after one eviction", i);
    }
    jg_principals_free(table);
}

static void
test_full_table_evicts_expired_first(void **state)
{
    struct jg_principals *table = jg_principals_create(3, TTL);
    uint8_t a[JG_CRED_HASH_LEN];
    uint8_t b[JG_CRED_HASH_LEN];
    uint8_t c[JG_CRED_HASH_LEN];
    uint8_t d[JG_CRED_HASH_LEN];
    uint8_t org[JG_UUID_LEN];
    uint8_t found[1][JG_UUID_LEN];

    (void)state;
    hash_token(table, "a", a);
    hash_token(table, "b", b);
    hash_token(table, "c", c);
    hash_token(table, "d", d);
    make_org(org, 1);

    jg_principals_learn(table, a, org, 0);
    jg_principals_learn(table, b, org, 50);
    jg_principals_learn(table, c, org, 55);
    /* At 70, a has expired and b, c have not. */
    jg_principals_learn(table, d, org, 70);
    assert_int_equal(jg_principals_stats(table)->evicted, 1);
    assert_false(jg_principals_allows(table, a, org, 70));
    assert_int_equal(jg_principals_orgs(table, a, 0, found, 1), 0);
    assert_true(jg_principals_allows(table, b, org, 70));
    assert_true(jg_principals_allows(table, c, org, 70));
    assert_true(jg_principals_allows(table, d, org, 70));

    /* A table of one keeps only the latest credential. */
    jg_principals_free(table);
    table = jg_principals_create(1, TTL);
    jg_principals_learn(table, a, org, 0);
    jg_principals_learn(table, b, org, 1);
    assert_false(jg_principals_allows(table, a, org, 1));
    assert_true(jg_principals_allows(table, b, org, 1));
    assert_int_equal(jg_principals_stats(table)->entries, 1);
    assert_int_equal(jg_principals_stats(table)->evicted, 1);
    jg_principals_free(table);
}

/* splitmix64: small, seedable, good enough to drive a test. */
static uint64_t
next_random(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t
test_seed(void)
{
    const char *text = getenv("JOBGATE_TEST_SEED");
    uint64_t seed;

    if (text != NULL && text[0] != '\0') {
        char *end = NULL;

        seed = strtoull(text, &end, 0);
        if (end == NULL || *end != '\0')
            fail_msg("JOBGATE_TEST_SEED=\"%s\" is not a number", text);
    } else {
        seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    }
    print_message("test_principal seed %" PRIu64
                  " (replay with JOBGATE_TEST_SEED=%" PRIu64 ")\n",
                  seed, seed);
    return seed;
}

enum { POOL_CREDS = 40, POOL_ORGS = 7, MODEL_TTL = 10 };

/* The reference model: a plain array, scanned in full for every step. */
struct model_cred {
    bool present;
    uint64_t last_learn;     /* learn counter value at its last learn */
    unsigned proof_count;
    unsigned orgs[JG_PRINCIPAL_MAX_ORGS]; /* oldest first */
    uint64_t expires[JG_PRINCIPAL_MAX_ORGS];
};

struct model {
    size_t max;
    size_t entries;
    uint64_t learn_counter;
    uint64_t evicted;
    uint64_t forgotten;
    struct model_cred creds[POOL_CREDS];
};

static void
model_learn(struct model *m, unsigned c, unsigned org, uint64_t now)
{
    struct model_cred *mc = &m->creds[c];
    unsigned k;

    if (!mc->present) {
        if (m->entries == m->max) {
            unsigned victim = POOL_CREDS;
            unsigned i;

            for (i = 0; i < POOL_CREDS; i++) {
                if (m->creds[i].present &&
                    (victim == POOL_CREDS ||
                     m->creds[i].last_learn < m->creds[victim].last_learn))
                    victim = i;
            }
            m->creds[victim].present = false;
            m->entries--;
            m->evicted++;
        }
        memset(mc, 0, sizeof(*mc));
        mc->present = true;
        m->entries++;
    }

    for (k = 0; k < mc->proof_count && mc->orgs[k] != org; k++)
        ;
    if (k == mc->proof_count && k == JG_PRINCIPAL_MAX_ORGS)
        k = 0;
    if (k < mc->proof_count) {
        for (; k + 1 < mc->proof_count; k++) {
            mc->orgs[k] = mc->orgs[k + 1];
            mc->expires[k] = mc->expires[k + 1];
        }
        mc->proof_count--;
    }
    mc->orgs[mc->proof_count] = org;
    mc->expires[mc->proof_count] = now + MODEL_TTL;
    mc->proof_count++;
    mc->last_learn = ++m->learn_counter;
}

static bool
model_allows(const struct model *m, unsigned c, unsigned org, uint64_t now)
{
    const struct model_cred *mc = &m->creds[c];
    unsigned k;

    if (!mc->present)
        return false;
    for (k = 0; k < mc->proof_count; k++) {
        if (mc->orgs[k] == org)
            return now < mc->expires[k];
    }
    return false;
}

/*
 * Make hashes whose first eight bytes, the bucket hash, take only a few
 * values. Probe chains then get long, wrap around the bucket array and
 * cross each other. The index in bytes 8 to 11 keeps the hashes distinct.
 */
static void
make_colliding_hashes(uint64_t *rng, uint8_t hashes[][JG_CRED_HASH_LEN])
{
    unsigned i;
    size_t b;

    for (i = 0; i < POOL_CREDS; i++) {
        uint64_t home = next_random(rng) % 6;

        /* Home buckets near the end of the array exercise wrap-around. */
        if (home >= 3)
            home = UINT64_MAX - (home - 3);
        for (b = 0; b < JG_CRED_HASH_LEN; b++)
            hashes[i][b] = (uint8_t)next_random(rng);
        memcpy(hashes[i], &home, sizeof(home));
        memcpy(hashes[i] + 8, &i, sizeof(i));
    }
}

static void
compare_with_model(struct jg_principals *table, const struct model *m,
                   uint8_t hashes[][JG_CRED_HASH_LEN],
                   uint8_t orgs[][JG_UUID_LEN], uint64_t now, unsigned step)
{
    const struct jg_principal_stats *stats = jg_principals_stats(table);
    uint8_t found[JG_PRINCIPAL_MAX_ORGS][JG_UUID_LEN];
    unsigned c;
    unsigned o;

    if (stats->entries != m->entries || stats->evicted != m->evicted ||
        stats->forgotten != m->forgotten)
        fail_msg("step %u: entries/evicted/forgotten %" PRIu64 "/%" PRIu64
                 "/%" PRIu64 ", model %zu/%" PRIu64 "/%" PRIu64, step,
                 stats->entries, stats->evicted, stats->forgotten,
                 m->entries, m->evicted, m->forgotten);

    for (c = 0; c < POOL_CREDS; c++) {
        size_t expected_count = 0;
        size_t count;

        for (o = 0; o < POOL_ORGS; o++) {
            bool want = model_allows(m, c, o, now);

            if (jg_principals_allows(table, hashes[c], orgs[o], now) != want)
                fail_msg("step %u: cred %u org %u: allows %d, model %d",
                         step, c, o, !want, want);
            expected_count += want;
        }

        count = jg_principals_orgs(table, hashes[c], now, found,
                                   JG_PRINCIPAL_MAX_ORGS);
        if (count != expected_count)
            fail_msg("step %u: cred %u: %zu orgs, model %zu", step, c, count,
                     expected_count);
        while (count-- > 0) {
            for (o = 0; o < POOL_ORGS; o++) {
                if (memcmp(found[count], orgs[o], JG_UUID_LEN) == 0)
                    break;
            }
            if (o == POOL_ORGS || !model_allows(m, c, o, now))
                fail_msg("step %u: cred %u: org not in the model", step, c);
        }
    }
}

static void
run_against_model(uint64_t *rng, size_t max_entries, unsigned steps)
{
    static uint8_t hashes[POOL_CREDS][JG_CRED_HASH_LEN];
    uint8_t orgs[POOL_ORGS][JG_UUID_LEN];
    struct jg_principals *table = jg_principals_create(max_entries,
                                                       MODEL_TTL);
    struct model *m = calloc(1, sizeof(*m));
    uint64_t now = 1000;
    unsigned step;
    unsigned o;

    assert_non_null(m);
    m->max = max_entries;
    make_colliding_hashes(rng, hashes);
    for (o = 0; o < POOL_ORGS; o++)
        make_org(orgs[o], o);

    for (step = 0; step < steps; step++) {
        uint64_t r = next_random(rng);
        unsigned c = (unsigned)((r >> 8) % POOL_CREDS);
        unsigned org = (unsigned)((r >> 16) % POOL_ORGS);

        switch (r % 8) {
        case 0:
            jg_principals_forget(table, hashes[c]);
            if (m->creds[c].present) {
                m->creds[c].present = false;
                m->entries--;
                m->forgotten++;
            }
            break;
        case 1:
            now += (r >> 24) % (2 * MODEL_TTL);
            break;
        default:
            jg_principals_learn(table, hashes[c], orgs[org], now);
            model_learn(m, c, org, now);
            break;
        }
        compare_with_model(table, m, hashes, orgs, now, step);
    }

    jg_principals_free(table);
    free(m);
}

static void
test_random_against_model(void **state)
{
    static const size_t sizes[] = {1, 2, 3, 7, 16, 33};
    uint64_t rng = test_seed();
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        run_against_model(&rng, sizes[i], 4000);
}

/*
 * One thread learns and forgets credentials in a table too small for them
 * all, evicting as it goes, while another looks them up. A lookup sees a
 * credential with its one organization or not at all, never another
 * credential's proof. Errors are counted, since cmocka's asserts may only
 * run on the main thread.
 */
#define SHARED_CREDS 64
#define SHARED_ROUNDS 20000

struct shared_table {
    struct jg_principals *table;
    uint8_t creds[SHARED_CREDS][JG_CRED_HASH_LEN];
    int errors;
};

static void *
shared_reader(void *arg)
{
    struct shared_table *st = arg;
    uint8_t found[JG_PRINCIPAL_MAX_ORGS][JG_UUID_LEN];
    uint8_t org[JG_UUID_LEN];
    unsigned i;
    size_t n;

    for (i = 0; i < SHARED_ROUNDS; i++) {
        unsigned c = i % SHARED_CREDS;

        make_org(org, c);
        n = jg_principals_orgs(st->table, st->creds[c], 1, found,
                               JG_PRINCIPAL_MAX_ORGS);
        if (n > 1 || (n == 1 && memcmp(found[0], org, JG_UUID_LEN) != 0))
            st->errors++;
        make_org(org, c + 1);
        if (jg_principals_allows(st->table, st->creds[c], org, 1))
            st->errors++;
    }
    return NULL;
}

static void
test_concurrent_readers_and_writer(void **state)
{
    struct shared_table st = {.errors = 0};
    uint8_t org[JG_UUID_LEN];
    pthread_t reader;
    unsigned i;

    (void)state;
    st.table = jg_principals_create(SHARED_CREDS / 2, TTL);
    for (i = 0; i < SHARED_CREDS; i++) {
        char token[32];

        snprintf(token, sizeof(token), "shared-%u", i);
        hash_token(st.table, token, st.creds[i]);
    }

    assert_int_equal(pthread_create(&reader, NULL, shared_reader, &st), 0);
    for (i = 0; i < SHARED_ROUNDS; i++) {
        unsigned c = (i * 7) % SHARED_CREDS;

        make_org(org, c);
        if (i % 5 == 4)
            jg_principals_forget(st.table, st.creds[c]);
        else
            jg_principals_learn(st.table, st.creds[c], org, 0);
    }
    assert_int_equal(pthread_join(reader, NULL), 0);
    assert_int_equal(st.errors, 0);
    assert_true(jg_principals_stats(st.table)->entries <= SHARED_CREDS / 2);
    jg_principals_free(st.table);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_extract_cases),
        cmocka_unit_test(test_extract_points_into_header),
        cmocka_unit_test(test_hash_keyed_per_table),
        cmocka_unit_test(test_hash_is_standard_hmac),
        cmocka_unit_test(test_fingerprint_first_four_bytes),
        cmocka_unit_test(test_learn_expires_at_ttl),
        cmocka_unit_test(test_ttl_saturates_near_max_time),
        cmocka_unit_test(test_forget_drops_credential),
        cmocka_unit_test(test_org_limit_drops_oldest_proof),
        cmocka_unit_test(test_full_table_evicts_one),
        cmocka_unit_test(test_full_table_evicts_expired_first),
        cmocka_unit_test(test_random_against_model),
        cmocka_unit_test(test_concurrent_readers_and_writer),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
