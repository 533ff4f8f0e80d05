/*
 * Unit tests for the LMDB cache. Each test works in its own mkdtemp
 * directory under /tmp, removed afterwards. Values are damaged through raw
 * LMDB calls while the cache is closed, because one process must not open
 * an environment twice. The map-full tests use a 1 MiB map so that
 * eviction runs within a few hundred entries, and the stale-reader test
 * kills a child process inside a read transaction.
 */
#include <errno.h>
#include <ftw.h>
#include <lmdb.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "jobgate/jg_cache.h"
#include "jobgate/jg_entry.h"
#include "jobgate/jg_util.h"

#define CONTENT_TYPE "application/json"
#define ONE_MIB (1024 * 1024)
#define BIG_MAP (16 * ONE_MIB)
/* The format version's offset in a jg_entry encoding. */
#define OFF_VERSION 3
/* Offset of the first body byte when the content type is CONTENT_TYPE. */
#define OFF_BODY (32 + sizeof(CONTENT_TYPE) - 1)

struct fixture {
    char root[64];       /* the mkdtemp directory */
    char dir[96];        /* root/cache, created by jg_cache_open */
    struct jg_cache *cache;
};

/* ---- fixture -------------------------------------------------------- */

static int
remove_path(const char *path, const struct stat *st, int type,
            struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path);
}

static int
setup(void **state)
{
    struct fixture *f = jg_calloc(1, sizeof(*f));

    snprintf(f->root, sizeof(f->root), "/tmp/jg-test-cache-XXXXXX");
    if (mkdtemp(f->root) == NULL) {
        jg_free(f);
        return -1;
    }
    snprintf(f->dir, sizeof(f->dir), "%s/cache", f->root);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;

    jg_cache_close(f->cache);
    nftw(f->root, remove_path, 8, FTW_DEPTH | FTW_PHYS);
    jg_free(f);
    return 0;
}

static void
open_cache(struct fixture *f, uint64_t max_bytes, uint64_t ttl_s)
{
    struct jg_cache_options opts = {
        .dir = f->dir,
        .max_bytes = max_bytes,
        .ttl_s = ttl_s,
    };
    char err[512] = "";

    if (jg_cache_open(&f->cache, &opts, err, sizeof(err)) != 0)
        fail_msg("jg_cache_open: %s", err);
}

static void
close_cache(struct fixture *f)
{
    jg_cache_close(f->cache);
    f->cache = NULL;
}

/* ---- entries -------------------------------------------------------- */

/* A distinct 16-byte id: tag, then n big-endian, then a fixed pattern. */
static void
make_id(uint8_t out[JG_UUID_LEN], uint8_t tag, uint32_t n)
{
    int i;

    out[0] = tag;
    out[1] = (uint8_t)(n >> 24);
    out[2] = (uint8_t)(n >> 16);
    out[3] = (uint8_t)(n >> 8);
    out[4] = (uint8_t)n;
    for (i = 5; i < JG_UUID_LEN; i++)
        out[i] = (uint8_t)(0x40 + i);
}

static void
make_cache_key(const uint8_t org[JG_UUID_LEN], const uint8_t job[JG_UUID_LEN],
               uint8_t key[JG_CACHE_KEY_LEN])
{
    memcpy(key, org, JG_UUID_LEN);
    memcpy(key + JG_UUID_LEN, job, JG_UUID_LEN);
}

/* Fill body with len bytes that depend on seed, so that entries differ. */
static void
fill_body(char *body, size_t len, uint32_t seed)
{
    size_t i;

    for (i = 0; i < len; i++)
        body[i] = (char)(seed * 31 + i * 7 + (i >> 8));
}

static void
put_body(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN],
         const uint8_t job[JG_UUID_LEN], int64_t stored_at, const char *body,
         size_t body_len)
{
    struct jg_entry e = {
        .stored_at = stored_at,
        .http_status = 200,
        .content_type = CONTENT_TYPE,
        .content_type_len = strlen(CONTENT_TYPE),
        .body = body,
        .body_len = body_len,
    };

    jg_cache_put(cache, org, job, &e);
}

/* Put a body of len bytes derived from seed. */
static void
put_seeded(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN],
           const uint8_t job[JG_UUID_LEN], int64_t stored_at, size_t len,
           uint32_t seed)
{
    char *body = jg_malloc(len);

    fill_body(body, len, seed);
    put_body(cache, org, job, stored_at, body, len);
    jg_free(body);
}

static void
assert_hit_body(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN],
                const uint8_t job[JG_UUID_LEN], int64_t now,
                const char *body, size_t body_len)
{
    struct jg_entry e;

    assert_int_equal(jg_cache_get(cache, org, job, now, &e), JG_CACHE_HIT);
    assert_int_equal(e.body_len, body_len);
    assert_memory_equal(e.body, body, body_len);
    jg_cache_release(cache);
}

static void
assert_hit_seeded(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN],
                  const uint8_t job[JG_UUID_LEN], int64_t now, size_t len,
                  uint32_t seed)
{
    char *body = jg_malloc(len);

    fill_body(body, len, seed);
    assert_hit_body(cache, org, job, now, body, len);
    jg_free(body);
}

static enum jg_cache_result
lookup(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN],
       const uint8_t job[JG_UUID_LEN], int64_t now)
{
    struct jg_entry e;
    enum jg_cache_result res = jg_cache_get(cache, org, job, now, &e);

    if (res == JG_CACHE_HIT)
        jg_cache_release(cache);
    return res;
}

/* ---- raw LMDB access while the cache is closed ---------------------- */

struct raw {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi entries;
    MDB_dbi by_time;
};

static void
raw_begin(struct raw *r, const char *dir)
{
    assert_int_equal(mdb_env_create(&r->env), 0);
    assert_int_equal(mdb_env_set_maxdbs(r->env, 2), 0);
    assert_int_equal(mdb_env_open(r->env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(r->env, NULL, 0, &r->txn), 0);
    assert_int_equal(mdb_dbi_open(r->txn, "entries", 0, &r->entries), 0);
    assert_int_equal(mdb_dbi_open(r->txn, "by_time", 0, &r->by_time), 0);
}

static void
raw_commit(struct raw *r)
{
    assert_int_equal(mdb_txn_commit(r->txn), 0);
    mdb_env_close(r->env);
}

/* Overwrite byte offset of the value stored at key with value. */
static void
raw_set_byte(const char *dir, const uint8_t key[JG_CACHE_KEY_LEN],
             size_t offset, uint8_t value)
{
    struct raw r;
    MDB_val k = {.mv_size = JG_CACHE_KEY_LEN, .mv_data = (void *)key};
    MDB_val v;
    uint8_t *copy;

    raw_begin(&r, dir);
    assert_int_equal(mdb_get(r.txn, r.entries, &k, &v), 0);
    assert_true(offset < v.mv_size);
    copy = jg_malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[offset] = value;
    v.mv_data = copy;
    assert_int_equal(mdb_put(r.txn, r.entries, &k, &v, 0), 0);
    raw_commit(&r);
    jg_free(copy);
}

static uint8_t
raw_get_byte(const char *dir, const uint8_t key[JG_CACHE_KEY_LEN],
             size_t offset)
{
    struct raw r;
    MDB_val k = {.mv_size = JG_CACHE_KEY_LEN, .mv_data = (void *)key};
    MDB_val v;
    uint8_t byte;

    raw_begin(&r, dir);
    assert_int_equal(mdb_get(r.txn, r.entries, &k, &v), 0);
    assert_true(offset < v.mv_size);
    byte = ((const uint8_t *)v.mv_data)[offset];
    raw_commit(&r);
    return byte;
}

static int64_t
time_row_stored_at(const uint8_t *row)
{
    uint64_t t = 0;
    int i;

    for (i = 0; i < 8; i++)
        t = t << 8 | row[i];
    return (int64_t)(t ^ (UINT64_C(1) << 63));
}

/*
 * Walk by_time. *rows counts its rows, *stale those whose entry is missing
 * or carries another stored-at time; every entry must have a row.
 */
static void
check_time_index(const char *dir, size_t *rows, size_t *stale)
{
    struct raw r;
    MDB_cursor *cur;
    MDB_val k;
    MDB_val v;
    MDB_stat st;
    size_t matched = 0;
    int rc;

    *rows = 0;
    *stale = 0;
    raw_begin(&r, dir);
    assert_int_equal(mdb_cursor_open(r.txn, r.by_time, &cur), 0);
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        MDB_val ek = {.mv_size = JG_CACHE_KEY_LEN,
                      .mv_data = (uint8_t *)k.mv_data + 8};
        MDB_val ev;
        struct jg_entry e;

        assert_int_equal(k.mv_size, 8 + JG_CACHE_KEY_LEN);
        assert_int_equal(v.mv_size, 0);
        (*rows)++;
        if (mdb_get(r.txn, r.entries, &ek, &ev) == 0 &&
            jg_entry_decode(ev.mv_data, ev.mv_size, &e) == JG_ENTRY_OK &&
            e.stored_at == time_row_stored_at(k.mv_data))
            matched++;
        else
            (*stale)++;
    }
    assert_int_equal(rc, MDB_NOTFOUND);
    mdb_cursor_close(cur);

    assert_int_equal(mdb_stat(r.txn, r.entries, &st), 0);
    assert_int_equal(st.ms_entries, matched);
    raw_commit(&r);
}

/* ---- basic behaviour ------------------------------------------------ */

static void
cache_round_trip(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    char body[600];
    struct jg_entry in;
    struct jg_entry out;
    size_t i;

    /* Every byte value, NUL included, must come back unchanged. */
    for (i = 0; i < sizeof(body); i++)
        body[i] = (char)(i * 13);
    make_id(org, 'o', 1);
    make_id(job, 'j', 1);
    open_cache(f, BIG_MAP, 3600);

    in = (struct jg_entry){
        .stored_at = 1717243200,
        .http_status = 200,
        .content_type = CONTENT_TYPE,
        .content_type_len = strlen(CONTENT_TYPE),
        .body = body,
        .body_len = sizeof(body),
    };
    jg_cache_put(f->cache, org, job, &in);
    assert_int_equal(jg_cache_pending(f->cache), 1);
    assert_int_equal(jg_cache_flush(f->cache), 1);
    assert_int_equal(jg_cache_pending(f->cache), 0);

    assert_int_equal(jg_cache_get(f->cache, org, job, 1717243260, &out),
                     JG_CACHE_HIT);
    assert_int_equal(out.stored_at, 1717243200);
    assert_int_equal(out.http_status, 200);
    assert_int_equal(out.content_type_len, strlen(CONTENT_TYPE));
    assert_memory_equal(out.content_type, CONTENT_TYPE,
                        strlen(CONTENT_TYPE));
    assert_int_equal(out.body_len, sizeof(body));
    assert_memory_equal(out.body, body, sizeof(body));
    jg_cache_release(f->cache);

    assert_int_equal(jg_cache_stats(f->cache)->hits, 1);
    assert_int_equal(jg_cache_stats(f->cache)->writes, 1);
    assert_int_equal(jg_cache_entries(f->cache), 1);
    assert_true(jg_cache_used_bytes(f->cache) > 0);
}

static void
cache_miss(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t other_org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint8_t other_job[JG_UUID_LEN];

    make_id(org, 'o', 1);
    make_id(other_org, 'o', 2);
    make_id(job, 'j', 1);
    make_id(other_job, 'j', 2);
    open_cache(f, BIG_MAP, 0);

    assert_int_equal(lookup(f->cache, org, job, 100), JG_CACHE_MISS);

    put_seeded(f->cache, org, job, 100, 50, 1);
    assert_int_equal(lookup(f->cache, org, job, 100), JG_CACHE_MISS);
    assert_int_equal(jg_cache_flush(f->cache), 1);

    /* The key is the pair: the same job under another org is a miss. */
    assert_int_equal(lookup(f->cache, other_org, job, 100), JG_CACHE_MISS);
    assert_int_equal(lookup(f->cache, org, other_job, 100), JG_CACHE_MISS);
    assert_int_equal(lookup(f->cache, org, job, 100), JG_CACHE_HIT);

    assert_int_equal(jg_cache_stats(f->cache)->misses, 4);
    assert_int_equal(jg_cache_stats(f->cache)->hits, 1);
}

static void
cache_expiry_at_ttl(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];

    make_id(org, 'o', 1);
    make_id(job, 'j', 1);
    open_cache(f, BIG_MAP, 100);
    put_seeded(f->cache, org, job, 1000, 40, 1);
    assert_int_equal(jg_cache_flush(f->cache), 1);

    assert_int_equal(lookup(f->cache, org, job, 1000), JG_CACHE_HIT);
    assert_int_equal(lookup(f->cache, org, job, 1099), JG_CACHE_HIT);
    /* Whole seconds: an age of exactly the TTL is still fresh. */
    assert_int_equal(lookup(f->cache, org, job, 1100), JG_CACHE_HIT);
    assert_int_equal(lookup(f->cache, org, job, 1101), JG_CACHE_EXPIRED);
    assert_int_equal(lookup(f->cache, org, job, 5000), JG_CACHE_EXPIRED);
    assert_int_equal(jg_cache_stats(f->cache)->expired, 2);
    assert_int_equal(jg_cache_stats(f->cache)->hits, 3);

    /* A clock stepped back: an entry from the future is still served. */
    assert_int_equal(lookup(f->cache, org, job, 10), JG_CACHE_HIT);
}

static void
cache_ttl_zero_never_expires(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];

    make_id(org, 'o', 1);
    make_id(job, 'j', 1);
    open_cache(f, BIG_MAP, 0);
    put_seeded(f->cache, org, job, 0, 40, 1);
    assert_int_equal(jg_cache_flush(f->cache), 1);

    assert_int_equal(lookup(f->cache, org, job, INT64_MAX), JG_CACHE_HIT);
    assert_int_equal(jg_cache_stats(f->cache)->expired, 0);
}

static void
cache_put_replaces_in_batch(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    size_t rows;
    size_t stale;

    make_id(org, 'o', 1);
    make_id(job, 'j', 1);
    open_cache(f, BIG_MAP, 0);

    put_body(f->cache, org, job, 100, "first", 5);
    put_body(f->cache, org, job, 200, "second", 6);
    assert_int_equal(jg_cache_pending(f->cache), 1);
    assert_int_equal(jg_cache_flush(f->cache), 1);
    assert_hit_body(f->cache, org, job, 300, "second", 6);

    /* A later batch replaces the stored entry and its by_time row. */
    put_body(f->cache, org, job, 300, "third", 5);
    assert_int_equal(jg_cache_flush(f->cache), 1);
    assert_hit_body(f->cache, org, job, 300, "third", 5);
    assert_int_equal(jg_cache_entries(f->cache), 1);

    close_cache(f);
    check_time_index(f->dir, &rows, &stale);
    assert_int_equal(rows, 1);
    assert_int_equal(stale, 0);
}

static void
cache_reopen_keeps_entries(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job1[JG_UUID_LEN];
    uint8_t job2[JG_UUID_LEN];

    make_id(org, 'o', 1);
    make_id(job1, 'j', 1);
    make_id(job2, 'j', 2);
    open_cache(f, BIG_MAP, 0);
    put_seeded(f->cache, org, job1, 100, 300, 1);
    assert_int_equal(jg_cache_flush(f->cache), 1);

    /* Left pending: jg_cache_close() commits it. */
    put_seeded(f->cache, org, job2, 100, 300, 2);
    close_cache(f);

    open_cache(f, BIG_MAP, 0);
    assert_int_equal(jg_cache_entries(f->cache), 2);
    assert_hit_seeded(f->cache, org, job1, 100, 300, 1);
    assert_hit_seeded(f->cache, org, job2, 100, 300, 2);
}

/* Lookups made while a hit is held share its snapshot, and a flush may
 * run meanwhile, as MDB_NOTLS allows. */
static void
cache_lookups_and_flush_during_hit(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job1[JG_UUID_LEN];
    uint8_t job2[JG_UUID_LEN];
    uint8_t job3[JG_UUID_LEN];
    struct jg_entry held;
    struct jg_entry second;

    make_id(org, 'o', 1);
    make_id(job1, 'j', 1);
    make_id(job2, 'j', 2);
    make_id(job3, 'j', 3);
    open_cache(f, BIG_MAP, 0);
    put_body(f->cache, org, job1, 100, "one", 3);
    put_body(f->cache, org, job2, 100, "two", 3);
    assert_int_equal(jg_cache_flush(f->cache), 2);

    assert_int_equal(jg_cache_get(f->cache, org, job1, 100, &held),
                     JG_CACHE_HIT);
    assert_int_equal(jg_cache_get(f->cache, org, job2, 100, &second),
                     JG_CACHE_HIT);
    assert_int_equal(lookup(f->cache, org, job3, 100), JG_CACHE_MISS);

    put_body(f->cache, org, job3, 100, "three", 5);
    put_body(f->cache, org, job1, 200, "uno", 3);
    assert_int_equal(jg_cache_flush(f->cache), 2);

    /* The held snapshot still shows the values as they were. */
    assert_memory_equal(held.body, "one", 3);
    assert_memory_equal(second.body, "two", 3);
    assert_int_equal(lookup(f->cache, org, job3, 100), JG_CACHE_MISS);
    jg_cache_release(f->cache);

    assert_hit_body(f->cache, org, job1, 200, "uno", 3);
    assert_hit_body(f->cache, org, job3, 200, "three", 5);
}

/* A batch that reaches 1024 queued writes is committed by the put. */
static void
cache_long_batch_flushed_early(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint32_t i;

    make_id(org, 'o', 1);
    open_cache(f, BIG_MAP, 0);
    for (i = 0; i < 1100; i++) {
        make_id(job, 'j', i);
        put_seeded(f->cache, org, job, 100, 32, i);
    }
    assert_int_equal(jg_cache_pending(f->cache), 1100 - 1024);
    assert_int_equal(jg_cache_stats(f->cache)->writes, 1024);
    assert_int_equal(jg_cache_flush(f->cache), 1100 - 1024);

    for (i = 0; i < 1100; i++) {
        make_id(job, 'j', i);
        assert_hit_seeded(f->cache, org, job, 100, 32, i);
    }
}

/* ---- damaged values ------------------------------------------------- */

static void
cache_corrupt_value_then_repair(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint8_t key[JG_CACHE_KEY_LEN];
    uint8_t byte;
    size_t rows;
    size_t stale;

    make_id(org, 'o', 1);
    make_id(job, 'j', 1);
    make_cache_key(org, job, key);
    open_cache(f, BIG_MAP, 0);
    put_seeded(f->cache, org, job, 100, 200, 1);
    assert_int_equal(jg_cache_flush(f->cache), 1);
    close_cache(f);

    byte = raw_get_byte(f->dir, key, OFF_BODY + 10);
    raw_set_byte(f->dir, key, OFF_BODY + 10, byte ^ 0x01);

    open_cache(f, BIG_MAP, 0);
    assert_int_equal(lookup(f->cache, org, job, 100), JG_CACHE_CORRUPT);
    assert_int_equal(jg_cache_stats(f->cache)->corrupt, 1);
    assert_int_equal(jg_cache_stats(f->cache)->hits, 0);

    /* The refetch that the miss causes overwrites the corrupt value. */
    put_seeded(f->cache, org, job, 200, 200, 2);
    assert_int_equal(jg_cache_flush(f->cache), 1);
    assert_hit_seeded(f->cache, org, job, 200, 200, 2);
    assert_int_equal(jg_cache_entries(f->cache), 1);
    close_cache(f);

    /* The corrupt value's stored-at was unreadable, so its row stays. */
    check_time_index(f->dir, &rows, &stale);
    assert_int_equal(rows, 2);
    assert_int_equal(stale, 1);
}

static void
cache_unknown_version_is_corrupt(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint8_t key[JG_CACHE_KEY_LEN];
    uint8_t sample[128];
    struct jg_entry e = {
        .content_type = CONTENT_TYPE,
        .content_type_len = strlen(CONTENT_TYPE),
        .body = "{}",
        .body_len = 2,
    };
    struct jg_entry out;

    /* Check that OFF_VERSION is where the format keeps its version. */
    assert_true(jg_entry_encoded_size(e.content_type_len, e.body_len) <=
                sizeof(sample));
    jg_entry_encode(sample, &e);
    sample[OFF_VERSION] = JG_ENTRY_VERSION + 1;
    assert_int_equal(
        jg_entry_decode(sample,
                        jg_entry_encoded_size(e.content_type_len, e.body_len),
                        &out),
        JG_ENTRY_BAD_VERSION);

    make_id(org, 'o', 1);
    make_id(job, 'j', 1);
    make_cache_key(org, job, key);
    open_cache(f, BIG_MAP, 0);
    put_seeded(f->cache, org, job, 100, 200, 1);
    assert_int_equal(jg_cache_flush(f->cache), 1);
    close_cache(f);

    raw_set_byte(f->dir, key, OFF_VERSION, JG_ENTRY_VERSION + 1);

    open_cache(f, BIG_MAP, 0);
    assert_int_equal(lookup(f->cache, org, job, 100), JG_CACHE_CORRUPT);
    assert_int_equal(jg_cache_stats(f->cache)->corrupt, 1);
}

/* ---- a full map ----------------------------------------------------- */

/*
 * The job id of the i-th entry in fill_map(): in key order, or scattered
 * over the key space by a multiplicative hash (a bijection on 32 bits), so
 * that eviction in time order deletes from every leaf of the tree.
 */
static void
fill_job_id(uint8_t job[JG_UUID_LEN], uint32_t i, bool scattered)
{
    make_id(job, 'j', scattered ? i * UINT32_C(2654435761) : i);
}

/*
 * Write count entries of body_len bytes under one org, job i stored at
 * base + i, flushing every batch puts. No flush may fail, nothing may be
 * dropped, eviction must run, and the newest entries must survive while
 * the oldest are gone.
 */
static void
fill_map(struct fixture *f, size_t body_len, uint32_t count, uint32_t batch,
         bool scattered)
{
    const struct jg_cache_stats *st;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    const int64_t base = 1000000;
    uint32_t i;

    make_id(org, 'o', 1);
    open_cache(f, ONE_MIB, 0);
    st = jg_cache_stats(f->cache);

    for (i = 0; i < count; i++) {
        fill_job_id(job, i, scattered);
        put_seeded(f->cache, org, job, base + i, body_len, i);
        if ((i + 1) % batch == 0)
            assert_true(jg_cache_flush(f->cache) >= 0);
    }
    assert_true(jg_cache_flush(f->cache) >= 0);

    assert_true(st->evicted > 0);
    assert_int_equal(st->dropped_map_full, 0);
    assert_int_equal(st->write_errors, 0);
    assert_int_equal(st->writes, count);
    assert_true(jg_cache_used_bytes(f->cache) <= ONE_MIB);
    assert_int_equal(jg_cache_entries(f->cache) + st->evicted, count);

    for (i = count - 20; i < count; i++) {
        fill_job_id(job, i, scattered);
        assert_hit_seeded(f->cache, org, job, base + count, body_len, i);
    }
    for (i = 0; i < 20; i++) {
        fill_job_id(job, i, scattered);
        assert_int_equal(lookup(f->cache, org, job, base + count),
                         JG_CACHE_MISS);
    }
}

static void
cache_map_full_small_values(void **state)
{
    fill_map(*state, 200, 6000, 8, false);
}

static void
cache_map_full_small_scattered(void **state)
{
    fill_map(*state, 200, 6000, 8, true);
}

static void
cache_map_full_leaf_values(void **state)
{
    fill_map(*state, 1500, 1000, 4, false);
}

static void
cache_map_full_leaf_scattered(void **state)
{
    fill_map(*state, 1500, 1000, 4, true);
}

static void
cache_map_full_overflow_values(void **state)
{
    fill_map(*state, 6000, 500, 3, true);
}

/*
 * Purging a whole full map frees most of it, but the freed pages become
 * reusable only two commits later. The writes that follow must all be
 * stored all the same.
 */
static void
cache_writes_after_purging_full_map(void **state)
{
    struct fixture *f = *state;
    const struct jg_cache_stats *st;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint64_t stored;
    uint32_t i;

    fill_map(f, 200, 6000, 8, true);
    st = jg_cache_stats(f->cache);
    stored = jg_cache_entries(f->cache);

    make_id(org, 'o', 1);
    assert_int_equal(jg_cache_purge_org(f->cache, org), (long)stored);
    assert_int_equal(jg_cache_entries(f->cache), 0);

    for (i = 0; i < 50; i++) {
        fill_job_id(job, 100000 + i, true);
        put_seeded(f->cache, org, job, 2000000 + i, 200, i);
        assert_int_equal(jg_cache_flush(f->cache), 1);
    }
    assert_int_equal(st->dropped_map_full, 0);
    for (i = 0; i < 50; i++) {
        fill_job_id(job, 100000 + i, true);
        assert_hit_seeded(f->cache, org, job, 2000000 + i, 200, i);
    }
}

/*
 * Entries alternate between two jobs in key order, so purging one job
 * deletes from every leaf of a full map. In one transaction that would need
 * a copy of every leaf, more than the free pages.
 */
static void
cache_purge_job_across_full_map(void **state)
{
    struct fixture *f = *state;
    const struct jg_cache_stats *st;
    uint8_t org[JG_UUID_LEN];
    uint8_t job_a[JG_UUID_LEN];
    uint8_t job_b[JG_UUID_LEN];
    long stored_a = 0;
    uint32_t i;

    make_id(job_a, 'a', 1);
    make_id(job_b, 'b', 1);
    open_cache(f, ONE_MIB, 0);
    st = jg_cache_stats(f->cache);

    for (i = 0; i < 4000 && st->evicted < 500; i++) {
        make_id(org, 'o', i / 2);
        put_seeded(f->cache, org, i % 2 ? job_b : job_a, 1000 + i, 200, i);
        if (i % 8 == 7)
            assert_int_equal(jg_cache_flush(f->cache), 8);
    }
    assert_true(st->evicted >= 500);
    for (i = 0; i < 4000; i++) {
        make_id(org, 'o', i);
        stored_a += lookup(f->cache, org, job_a, 0) == JG_CACHE_HIT;
    }
    assert_true(stored_a > 100);

    assert_int_equal(jg_cache_purge_job(f->cache, job_a), stored_a);
    assert_int_equal(jg_cache_purge_job(f->cache, job_a), 0);

    for (i = 0; i < 50; i++) {
        make_id(org, 'n', i);
        put_seeded(f->cache, org, job_a, 100000 + i, 200, i);
        assert_int_equal(jg_cache_flush(f->cache), 1);
    }
    assert_int_equal(st->dropped_map_full, 0);
    assert_int_equal(st->write_errors, 0);
}

/* A batch that can never fit is dropped and counted; the cache goes on. */
static void
cache_oversized_batch_dropped(void **state)
{
    struct fixture *f = *state;
    const struct jg_cache_stats *st;
    uint8_t org[JG_UUID_LEN];
    uint8_t job1[JG_UUID_LEN];
    uint8_t job2[JG_UUID_LEN];
    uint8_t job3[JG_UUID_LEN];

    make_id(org, 'o', 1);
    make_id(job1, 'j', 1);
    make_id(job2, 'j', 2);
    make_id(job3, 'j', 3);
    open_cache(f, ONE_MIB, 0);
    st = jg_cache_stats(f->cache);

    put_seeded(f->cache, org, job1, 100, 100, 1);
    assert_int_equal(jg_cache_flush(f->cache), 1);

    put_seeded(f->cache, org, job2, 200, 2 * ONE_MIB, 2);
    assert_int_equal(jg_cache_flush(f->cache), 0);
    assert_int_equal(st->dropped_map_full, 1);
    assert_int_equal(st->write_errors, 0);
    assert_int_equal(jg_cache_pending(f->cache), 0);
    assert_int_equal(lookup(f->cache, org, job2, 200), JG_CACHE_MISS);
    assert_hit_seeded(f->cache, org, job1, 200, 100, 1);

    put_seeded(f->cache, org, job3, 300, 100, 3);
    assert_int_equal(jg_cache_flush(f->cache), 1);
    assert_hit_seeded(f->cache, org, job3, 300, 100, 3);
}

/*
 * 150 expired entries, about a third of the map, then fresh entries until
 * the first eviction. Evicting oldest-first only down to the low-water
 * mark would leave some expired entries; all of them go, and no fresh one.
 */
static void
cache_evicts_expired_first(void **state)
{
    struct fixture *f = *state;
    const struct jg_cache_stats *st;
    const uint32_t nexpired = 150;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    int64_t now = jg_wall_s();
    uint32_t nfresh;
    uint32_t i;

    make_id(org, 'o', 1);
    open_cache(f, ONE_MIB, 3600);
    st = jg_cache_stats(f->cache);

    for (i = 0; i < nexpired; i++) {
        make_id(job, 'x', i);
        put_seeded(f->cache, org, job, now - 100000 + i, 1500, i);
        if (i % 10 == 9)
            assert_int_equal(jg_cache_flush(f->cache), 10);
    }
    assert_int_equal(st->evicted, 0);

    for (nfresh = 0; nfresh < 1000 && st->evicted == 0; nfresh++) {
        make_id(job, 'f', nfresh);
        put_seeded(f->cache, org, job, now - 1000 + nfresh, 1500, nfresh);
        assert_int_equal(jg_cache_flush(f->cache), 1);
    }
    assert_int_equal(st->evicted, nexpired);

    for (i = 0; i < nexpired; i++) {
        make_id(job, 'x', i);
        assert_int_equal(lookup(f->cache, org, job, now), JG_CACHE_MISS);
    }
    for (i = 0; i < nfresh; i++) {
        make_id(job, 'f', i);
        assert_hit_seeded(f->cache, org, job, now, 1500, i);
    }
    assert_int_equal(st->expired, 0);
}

/*
 * A by_time row left behind by a corrupt value is the oldest row. Eviction
 * must drop the row alone and keep the entry, rewritten since then.
 */
static void
cache_stale_time_row_tolerated(void **state)
{
    struct fixture *f = *state;
    const struct jg_cache_stats *st;
    uint8_t org[JG_UUID_LEN];
    uint8_t keep_job[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint8_t key[JG_CACHE_KEY_LEN];
    size_t rows;
    size_t stale;
    uint32_t i;

    make_id(org, 'o', 1);
    make_id(keep_job, 'k', 1);
    make_cache_key(org, keep_job, key);
    open_cache(f, ONE_MIB, 0);
    put_seeded(f->cache, org, keep_job, 1, 300, 1);
    assert_int_equal(jg_cache_flush(f->cache), 1);
    close_cache(f);
    raw_set_byte(f->dir, key, OFF_BODY, raw_get_byte(f->dir, key, OFF_BODY) ^
                                            0xff);

    open_cache(f, ONE_MIB, 0);
    st = jg_cache_stats(f->cache);
    put_seeded(f->cache, org, keep_job, 1000000, 300, 2);
    assert_int_equal(jg_cache_flush(f->cache), 1);

    for (i = 0; i < 2000 && st->evicted < 50; i++) {
        make_id(job, 'j', i);
        put_seeded(f->cache, org, job, 2 + i, 1500, i);
        assert_true(jg_cache_flush(f->cache) >= 0);
    }
    assert_true(st->evicted >= 50);
    assert_hit_seeded(f->cache, org, keep_job, 1000000, 300, 2);
    make_id(job, 'j', 0);
    assert_int_equal(lookup(f->cache, org, job, 1000000), JG_CACHE_MISS);
    close_cache(f);

    check_time_index(f->dir, &rows, &stale);
    assert_int_equal(stale, 0);
}

/* ---- purges --------------------------------------------------------- */

/* Three orgs by four jobs, each body seeded with org * 10 + job. */
static void
put_grid(struct jg_cache *cache)
{
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint32_t o;
    uint32_t j;

    for (o = 1; o <= 3; o++) {
        for (j = 1; j <= 4; j++) {
            make_id(org, 'o', o);
            make_id(job, 'j', j);
            put_seeded(cache, org, job, 100 + j, 64, o * 10 + j);
        }
    }
    assert_int_equal(jg_cache_flush(cache), 12);
}

static void
cache_purge_job(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint8_t missing[JG_UUID_LEN];
    uint32_t o;
    uint32_t j;
    size_t rows;
    size_t stale;

    open_cache(f, BIG_MAP, 0);
    put_grid(f->cache);

    make_id(job, 'j', 2);
    assert_int_equal(jg_cache_purge_job(f->cache, job), 3);
    assert_int_equal(jg_cache_purge_job(f->cache, job), 0);
    make_id(missing, 'j', 9);
    assert_int_equal(jg_cache_purge_job(f->cache, missing), 0);
    assert_int_equal(jg_cache_entries(f->cache), 9);

    for (o = 1; o <= 3; o++) {
        for (j = 1; j <= 4; j++) {
            make_id(org, 'o', o);
            make_id(job, 'j', j);
            if (j == 2)
                assert_int_equal(lookup(f->cache, org, job, 200),
                                 JG_CACHE_MISS);
            else
                assert_hit_seeded(f->cache, org, job, 200, 64, o * 10 + j);
        }
    }

    /* A queued write of the purged job is discarded, not stored later. */
    make_id(org, 'o', 1);
    make_id(job, 'j', 2);
    put_seeded(f->cache, org, job, 300, 64, 99);
    assert_int_equal(jg_cache_purge_job(f->cache, job), 0);
    assert_int_equal(jg_cache_pending(f->cache), 0);
    assert_int_equal(jg_cache_flush(f->cache), 0);
    assert_int_equal(lookup(f->cache, org, job, 300), JG_CACHE_MISS);
    close_cache(f);

    check_time_index(f->dir, &rows, &stale);
    assert_int_equal(rows, 9);
    assert_int_equal(stale, 0);
}

static void
cache_purge_org(void **state)
{
    struct fixture *f = *state;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint8_t empty_org[JG_UUID_LEN];
    uint32_t o;
    uint32_t j;
    size_t rows;
    size_t stale;

    open_cache(f, BIG_MAP, 0);
    put_grid(f->cache);

    make_id(org, 'o', 2);
    assert_int_equal(jg_cache_purge_org(f->cache, org), 4);
    assert_int_equal(jg_cache_purge_org(f->cache, org), 0);

    /* An org with no entries that sorts between two that have some. */
    memcpy(empty_org, org, JG_UUID_LEN);
    empty_org[JG_UUID_LEN - 1]++;
    assert_int_equal(jg_cache_purge_org(f->cache, empty_org), 0);
    assert_int_equal(jg_cache_entries(f->cache), 8);

    for (o = 1; o <= 3; o++) {
        for (j = 1; j <= 4; j++) {
            make_id(org, 'o', o);
            make_id(job, 'j', j);
            if (o == 2)
                assert_int_equal(lookup(f->cache, org, job, 200),
                                 JG_CACHE_MISS);
            else
                assert_hit_seeded(f->cache, org, job, 200, 64, o * 10 + j);
        }
    }

    make_id(org, 'o', 3);
    assert_int_equal(jg_cache_purge_org(f->cache, org), 4);
    make_id(org, 'o', 1);
    assert_int_equal(jg_cache_purge_org(f->cache, org), 4);
    assert_int_equal(jg_cache_entries(f->cache), 0);
    close_cache(f);

    check_time_index(f->dir, &rows, &stale);
    assert_int_equal(rows, 0);
}

/* ---- the directory -------------------------------------------------- */

static void
cache_world_writable_rejected(void **state)
{
    struct fixture *f = *state;
    struct jg_cache_options opts = {.dir = f->dir, .max_bytes = BIG_MAP};
    char err[512] = "";

    assert_int_equal(mkdir(f->dir, 0700), 0);
    assert_int_equal(chmod(f->dir, 0777), 0);

    assert_int_equal(jg_cache_open(&f->cache, &opts, err, sizeof(err)), -1);
    assert_null(f->cache);
    assert_non_null(strstr(err, f->dir));
    assert_non_null(strstr(err, "world-writable"));

    /* Sticky like /tmp is still writable by others. */
    assert_int_equal(chmod(f->dir, 01777), 0);
    assert_int_equal(jg_cache_open(&f->cache, &opts, err, sizeof(err)), -1);

    assert_int_equal(chmod(f->dir, 0770), 0);
    assert_int_equal(jg_cache_open(&f->cache, &opts, err, sizeof(err)), 0);
}

static void
cache_file_open_to_others_rejected(void **state)
{
    struct fixture *f = *state;
    struct jg_cache_options opts = {.dir = f->dir, .max_bytes = BIG_MAP};
    char path[160];
    char err[512] = "";

    open_cache(f, BIG_MAP, 0);
    close_cache(f);
    snprintf(path, sizeof(path), "%s/data.mdb", f->dir);

    assert_int_equal(chmod(path, 0666), 0);
    assert_int_equal(jg_cache_open(&f->cache, &opts, err, sizeof(err)), -1);
    assert_null(f->cache);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "mode 0666"));

    /* Readable by others is refused too; by the group is the owner's call. */
    assert_int_equal(chmod(path, 0604), 0);
    assert_int_equal(jg_cache_open(&f->cache, &opts, err, sizeof(err)), -1);
    assert_int_equal(chmod(path, 0660), 0);
    assert_int_equal(jg_cache_open(&f->cache, &opts, err, sizeof(err)), 0);
}

static void
cache_bad_options_rejected(void **state)
{
    struct fixture *f = *state;
    struct jg_cache_options opts = {.dir = f->dir, .max_bytes = 4096};
    char err[512] = "";
    FILE *fp;

    assert_int_equal(jg_cache_open(&f->cache, &opts, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cache_max_bytes"));

    opts.max_bytes = BIG_MAP;
    fp = fopen(f->dir, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(jg_cache_open(&f->cache, &opts, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "not a directory"));
}

static void
cache_file_modes(void **state)
{
    struct fixture *f = *state;
    char path[160];
    struct stat st;
    mode_t old_mask = umask(022);

    open_cache(f, BIG_MAP, 0);
    umask(old_mask);

    assert_int_equal(stat(f->dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    snprintf(path, sizeof(path), "%s/lock.mdb", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
}

/* ---- a reader killed in its transaction ----------------------------- */

/*
 * Child body: open the environment, optionally begin a read transaction,
 * write one byte to ready_fd, then block reading hold_fd, which returns
 * only when the parent closes the pipe or the child is killed.
 */
static void
child_open_and_wait(const char *dir, int ready_fd, int hold_fd,
                    bool with_reader)
{
    MDB_env *env;
    MDB_txn *txn;
    char c = 'r';

    if (mdb_env_create(&env) != 0 || mdb_env_set_maxdbs(env, 2) != 0 ||
        mdb_env_open(env, dir, 0, 0600) != 0)
        _exit(2);
    if (with_reader && mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0)
        _exit(3);
    if (write(ready_fd, &c, 1) != 1)
        _exit(4);
    close(ready_fd);
    (void)read(hold_fd, &c, 1);
    _exit(0);
}

static pid_t
spawn_child(const char *dir, int ready[2], int hold[2], bool with_reader)
{
    pid_t pid = fork();
    char c;

    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        close(hold[1]);
        child_open_and_wait(dir, ready[1], hold[0], with_reader);
    }
    assert_int_equal(read(ready[0], &c, 1), 1);
    return pid;
}

/*
 * A second child keeps the environment open while the reader dies:
 * without it the parent's open would be the only user, and LMDB resets the
 * whole reader table when the first process opens an environment.
 */
static void
cache_stale_reader_cleared(void **state)
{
    struct fixture *f = *state;
    int ready[2];
    int hold[2];
    pid_t holder;
    pid_t reader;
    int status;

    open_cache(f, BIG_MAP, 0);
    close_cache(f);

    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(hold), 0);
    holder = spawn_child(f->dir, ready, hold, false);
    reader = spawn_child(f->dir, ready, hold, true);
    close(ready[1]);
    close(ready[0]);

    assert_int_equal(kill(reader, SIGKILL), 0);
    assert_int_equal(waitpid(reader, &status, 0), reader);
    assert_true(WIFSIGNALED(status));

    open_cache(f, BIG_MAP, 0);
    assert_true(jg_cache_stats(f->cache)->stale_readers >= 1);

    close(hold[1]);
    close(hold[0]);
    assert_int_equal(waitpid(holder, &status, 0), holder);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* The cache works after the check. */
    {
        uint8_t org[JG_UUID_LEN];
        uint8_t job[JG_UUID_LEN];

        make_id(org, 'o', 1);
        make_id(job, 'j', 1);
        put_seeded(f->cache, org, job, 100, 64, 1);
        assert_int_equal(jg_cache_flush(f->cache), 1);
        assert_hit_seeded(f->cache, org, job, 100, 64, 1);
    }
}

/* ---- random operations against a model ------------------------------ */

#define MODEL_ORGS 3
#define MODEL_JOBS 5
#define MODEL_KEYS (MODEL_ORGS * MODEL_JOBS)
#define MODEL_TTL 100
#define MODEL_MAX_BODY 400
#define MODEL_STEPS 3000

struct model_entry {
    bool present;
    int64_t stored_at;
    size_t len;
    uint32_t seed;
};

struct model {
    struct model_entry stored[MODEL_KEYS];
    struct model_entry queued[MODEL_KEYS];
};

static uint64_t
next_random(uint64_t *state)
{
    /* xorshift64* */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * UINT64_C(2685821657736338717);
}

static uint64_t
test_seed(void)
{
    const char *env = getenv("JOBGATE_TEST_SEED");
    uint64_t seed;

    if (env != NULL && env[0] != '\0')
        seed = strtoull(env, NULL, 0);
    else
        seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (seed == 0)
        seed = 1;
    print_message("test_cache: seed %llu (set JOBGATE_TEST_SEED to repeat)\n",
                  (unsigned long long)seed);
    return seed;
}

static void
model_ids(size_t k, uint8_t org[JG_UUID_LEN], uint8_t job[JG_UUID_LEN])
{
    make_id(org, 'o', (uint32_t)(k / MODEL_JOBS));
    make_id(job, 'j', (uint32_t)(k % MODEL_JOBS));
}

static void
model_flush(struct model *m)
{
    size_t k;

    for (k = 0; k < MODEL_KEYS; k++) {
        if (m->queued[k].present)
            m->stored[k] = m->queued[k];
        m->queued[k].present = false;
    }
}

static size_t
model_count(const struct model_entry *set)
{
    size_t k;
    size_t n = 0;

    for (k = 0; k < MODEL_KEYS; k++)
        n += set[k].present;
    return n;
}

/* Purge the org (by_org) or the job with this index from the model, and
 * return the count of stored entries removed. */
static long
model_purge(struct model *m, size_t index, bool by_org)
{
    long removed = 0;
    size_t k;

    for (k = 0; k < MODEL_KEYS; k++) {
        size_t id = by_org ? k / MODEL_JOBS : k % MODEL_JOBS;

        if (id != index)
            continue;
        removed += m->stored[k].present;
        m->stored[k].present = false;
        m->queued[k].present = false;
    }
    return removed;
}

static void
model_check_get(struct fixture *f, const struct model *m, size_t k,
                int64_t now)
{
    const struct model_entry *e = &m->stored[k];
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];

    model_ids(k, org, job);
    if (!e->present)
        assert_int_equal(lookup(f->cache, org, job, now), JG_CACHE_MISS);
    else if (now > e->stored_at && now - e->stored_at > MODEL_TTL)
        assert_int_equal(lookup(f->cache, org, job, now), JG_CACHE_EXPIRED);
    else
        assert_hit_seeded(f->cache, org, job, now, e->len, e->seed);
}

/* ---- handles of several threads ------------------------------------ */

#define SHARE_ROUNDS 300

struct share_thread {
    struct jg_cache *cache;
    uint32_t tag;    /* 0 or 1: this thread's organization */
    int errors;      /* cmocka's asserts may only run on the main thread */
};

/* Check a looked-up entry against the body derived from seed. */
static bool
entry_is(const struct jg_entry *e, size_t len, uint32_t seed)
{
    char body[64 + SHARE_ROUNDS];

    fill_body(body, len, seed);
    return e->body_len == len && memcmp(e->body, body, len) == 0;
}

/*
 * Store a job of its own organization and read it back, then read the
 * other thread's job of the same number, which is absent or whole.
 */
static void *
share_thread_main(void *arg)
{
    struct share_thread *t = arg;
    uint8_t org[JG_UUID_LEN];
    uint8_t other[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    struct jg_entry e;
    enum jg_cache_result res;
    uint32_t i;

    make_id(org, 'o', t->tag);
    make_id(other, 'o', 1 - t->tag);
    for (i = 0; i < SHARE_ROUNDS; i++) {
        make_id(job, 'j', i);
        put_seeded(t->cache, org, job, 1000, 64 + i, t->tag * 1000 + i);
        if (jg_cache_flush(t->cache) != 1)
            t->errors++;

        if (jg_cache_get(t->cache, org, job, 1000, &e) != JG_CACHE_HIT) {
            t->errors++;
        } else {
            t->errors += !entry_is(&e, 64 + i, t->tag * 1000 + i);
            jg_cache_release(t->cache);
        }

        res = jg_cache_get(t->cache, other, job, 1000, &e);
        if (res == JG_CACHE_HIT) {
            t->errors += !entry_is(&e, 64 + i, (1 - t->tag) * 1000 + i);
            jg_cache_release(t->cache);
        } else if (res != JG_CACHE_MISS) {
            t->errors++;
        }
    }
    return NULL;
}

static void
cache_shared_handles_across_threads(void **state)
{
    struct fixture *f = *state;
    struct share_thread t[2];
    pthread_t thread;
    uint8_t org[JG_UUID_LEN];
    uint8_t job[JG_UUID_LEN];
    uint32_t i;

    open_cache(f, BIG_MAP, 0);
    t[0] = (struct share_thread){.cache = f->cache, .tag = 0};
    t[1] = (struct share_thread){.cache = jg_cache_share(f->cache), .tag = 1};
    assert_non_null(t[1].cache);

    assert_int_equal(pthread_create(&thread, NULL, share_thread_main, &t[1]),
                     0);
    share_thread_main(&t[0]);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(t[0].errors, 0);
    assert_int_equal(t[1].errors, 0);

    /* Each handle counts its own writes. */
    assert_int_equal(jg_cache_stats(t[0].cache)->writes, SHARE_ROUNDS);
    assert_int_equal(jg_cache_stats(t[1].cache)->writes, SHARE_ROUNDS);
    assert_int_equal(jg_cache_entries(f->cache), 2 * SHARE_ROUNDS);

    /* Every entry of both threads is whole through either handle. */
    for (i = 0; i < SHARE_ROUNDS; i++) {
        make_id(job, 'j', i);
        make_id(org, 'o', 1);
        assert_hit_seeded(f->cache, org, job, 1000, 64 + i, 1000 + i);
        make_id(org, 'o', 0);
        assert_hit_seeded(t[1].cache, org, job, 1000, 64 + i, i);
    }
    jg_cache_close(t[1].cache);

    /* The environment outlives the closed handle. */
    make_id(org, 'o', 0);
    make_id(job, 'j', 0);
    assert_hit_seeded(f->cache, org, job, 1000, 64, 0);
}

static void
cache_random_against_model(void **state)
{
    struct fixture *f = *state;
    struct model m;
    uint64_t rng = test_seed();
    const int64_t base = 50000;
    size_t rows;
    size_t stale;
    int step;

    memset(&m, 0, sizeof(m));
    open_cache(f, BIG_MAP, MODEL_TTL);

    for (step = 0; step < MODEL_STEPS; step++) {
        unsigned int op = (unsigned int)(next_random(&rng) % 100);
        size_t k = (size_t)(next_random(&rng) % MODEL_KEYS);
        uint8_t org[JG_UUID_LEN];
        uint8_t job[JG_UUID_LEN];

        model_ids(k, org, job);
        if (op < 40) {
            struct model_entry *q = &m.queued[k];

            q->present = true;
            q->stored_at = base + (int64_t)(next_random(&rng) % 200);
            q->len = (size_t)(next_random(&rng) % (MODEL_MAX_BODY + 1));
            q->seed = (uint32_t)next_random(&rng);
            put_seeded(f->cache, org, job, q->stored_at, q->len, q->seed);
            assert_int_equal(jg_cache_pending(f->cache),
                             model_count(m.queued));
        } else if (op < 55) {
            assert_int_equal(jg_cache_flush(f->cache),
                             (int)model_count(m.queued));
            model_flush(&m);
        } else if (op < 85) {
            model_check_get(f, &m, k,
                            base + (int64_t)(next_random(&rng) % 320));
        } else if (op < 90) {
            size_t j = k % MODEL_JOBS;

            assert_int_equal(jg_cache_purge_job(f->cache, job),
                             model_purge(&m, j, false));
        } else if (op < 95) {
            size_t o = k / MODEL_JOBS;

            assert_int_equal(jg_cache_purge_org(f->cache, org),
                             model_purge(&m, o, true));
        } else if (op < 98) {
            close_cache(f);
            model_flush(&m);
            open_cache(f, BIG_MAP, MODEL_TTL);
        } else {
            assert_int_equal(jg_cache_entries(f->cache),
                             model_count(m.stored));
        }
    }

    close_cache(f);
    model_flush(&m);
    check_time_index(f->dir, &rows, &stale);
    assert_int_equal(rows, model_count(m.stored));
    assert_int_equal(stale, 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(cache_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(cache_miss, setup, teardown),
        cmocka_unit_test_setup_teardown(cache_expiry_at_ttl, setup, teardown),
        cmocka_unit_test_setup_teardown(cache_shared_handles_across_threads,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_ttl_zero_never_expires, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_put_replaces_in_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_reopen_keeps_entries, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_lookups_and_flush_during_hit,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_long_batch_flushed_early, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_corrupt_value_then_repair,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_unknown_version_is_corrupt,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_map_full_small_values, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_map_full_small_scattered,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_map_full_leaf_values, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_map_full_leaf_scattered, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_map_full_overflow_values,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_writes_after_purging_full_map,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_purge_job_across_full_map,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_oversized_batch_dropped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_evicts_expired_first, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_stale_time_row_tolerated,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_purge_job, setup, teardown),
        cmocka_unit_test_setup_teardown(cache_purge_org, setup, teardown),
        cmocka_unit_test_setup_teardown(cache_file_open_to_others_rejected,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cache_world_writable_rejected, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_bad_options_rejected, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_file_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(cache_stale_reader_cleared, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cache_random_against_model, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
