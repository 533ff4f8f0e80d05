/*
 * The terminal-response cache on LMDB. This file owns the environment, its
 * two databases, the one read transaction handle, the batch of writes that
 * waits for jg_cache_flush(), and eviction.
 *
 * "entries" maps the 32-byte key (organization id, job id) to a jg_entry
 * encoding. "by_time" has one empty row per entry, keyed by the entry's
 * stored-at time and then its key, so that its first rows are the expired
 * and oldest entries and eviction never scans the whole cache. A by_time row
 * whose entry is gone or was rewritten at another time is stale: eviction
 * deletes such a row alone.
 *
 * The environment is opened with MDB_NOTLS, which ties a reader slot to a
 * transaction handle instead of a thread. Lookups renew and reset one
 * handle, which costs less than beginning and aborting a transaction, and
 * the handle keeps its slot for the life of the cache.
 *
 * Room is measured as LMDB allocates it. LMDB never shrinks its file: a
 * write takes pages from the free list, then from the unused tail of the
 * map. A page freed by transaction T is reused only from transaction T+2
 * on (in LMDB 0.9, mdb_find_oldest() starts from the current transaction
 * id minus one), and every write, a delete included, copies the pages it
 * changes before changing them. So
 * a commit that leaves the next transaction no free page wedges the map:
 * nothing can be deleted any more. The high-water mark keeps a tenth of the
 * map free for the next transaction, and eviction and purges run in
 * transactions sized to the free pages they find.
 */
#include "jobgate/jg_cache.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "jobgate/jg_log.h"
#include "jobgate/jg_util.h"

#define KEY_LEN JG_CACHE_KEY_LEN
/* A by_time key: stored_at (8 bytes, big-endian, sign bit flipped) + key. */
#define TIME_KEY_LEN (8 + KEY_LEN)

/* The smallest map accepted: the free tenth of a smaller map is too few
 * pages for eviction to make progress in. */
#define MIN_MAP_BYTES (1024 * 1024)

/*
 * Percentages of the map in use, counting free pages that the next write
 * cannot reuse yet as used. A flush that would pass HIGH_WATER_PCT evicts
 * first, down to LOW_WATER_PCT. The gap keeps most flushes free of
 * eviction work.
 */
#define HIGH_WATER_PCT 90
#define LOW_WATER_PCT 75

/* Free pages a transaction that deletes must leave for the next one. */
#define RESERVE_PAGES 8

/* LMDB's two meta pages, at the start of the file. */
#define META_PAGES 2
/* LMDB 0.9 page and node header sizes, used only in size estimates. */
#define PAGE_HEADER_BYTES 16
#define NODE_HEADER_BYTES 8

/*
 * With MDB_NOTLS each handle takes exactly one reader slot, and write
 * transactions take none, so a process needs one slot per worker thread
 * (64 at most). 254 leaves room for several such processes sharing one
 * directory, plus mdb_stat.
 */
#define MAX_READERS 254

/* Rows one eviction or purge transaction deletes at most, which bounds
 * its dirty pages well below LMDB's limit on a transaction's dirty pages. */
#define DELETE_ROWS_PER_TXN 4096
/* Transactions one eviction or purge runs at most. */
#define DELETE_MAX_TXNS 65536

/* A batch this long is committed by jg_cache_put() itself. */
#define MAX_PENDING 1024

/* A write waiting for jg_cache_flush(). */
struct pending_write {
    uint8_t key[KEY_LEN];
    int64_t stored_at;
    uint8_t *value; /* jg_entry encoding, owned */
    size_t value_len;
};

/* Sizes of the map and of what is in it, in pages. */
struct usage {
    size_t psize;
    size_t map_pages;
    size_t file_pages;  /* the data file's last page + 1 */
    size_t live_pages;  /* the trees and the meta pages */
    /* Free-list pages: reusable by the next write, and freed by the last
     * commit (reusable one commit later). Read only when asked for. */
    size_t free_ready;
    size_t free_recent;
    size_t entry_leaves;
    size_t time_leaves;
    unsigned int entry_depth;
    unsigned int time_depth;
    uint64_t entries;
};

struct jg_cache {
    MDB_env *env;
    MDB_dbi main_dbi; /* names the other two; its pages count as used */
    MDB_dbi entries;
    MDB_dbi by_time;

    /*
     * The read transaction: reset between lookups, and active from a hit
     * until jg_cache_release(), while the caller's entry points into it.
     */
    MDB_txn *reader;
    bool reader_active;

    char *dir;
    uint64_t ttl_s;

    /*
     * Set on a handle from jg_cache_share(), which uses the environment of
     * another and must not close it. Once a cache is shared, no handle
     * adopts a map grown by another process: mdb_env_set_mapsize() needs
     * every transaction of the process to be over, which one thread
     * cannot know of the others.
     */
    bool borrowed_env;
    bool shared;

    /*
     * The batch belongs to this handle's thread, but an admin purge on
     * another thread drops entries from it. The lock is held for every
     * change and for the whole commit, so a purge waits for a commit in
     * progress and then deletes what it wrote.
     */
    pthread_mutex_t pending_lock;
    struct pending_write *pending;
    size_t pending_len;
    size_t pending_cap;

    /* Set once a full map has been logged; cleared by the next commit. */
    bool map_full_logged;

    struct jg_cache_stats stats;
};

static void
set_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
set_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void
make_key(const uint8_t org[JG_UUID_LEN], const uint8_t job[JG_UUID_LEN],
         uint8_t key[KEY_LEN])
{
    memcpy(key, org, JG_UUID_LEN);
    memcpy(key + JG_UUID_LEN, job, JG_UUID_LEN);
}

/*
 * Flipping the sign bit makes the unsigned big-endian byte order of the
 * time the numeric order of the signed value, so memcmp sorts by_time.
 */
static void
make_time_key(int64_t stored_at, const uint8_t key[KEY_LEN],
              uint8_t out[TIME_KEY_LEN])
{
    uint64_t t = (uint64_t)stored_at ^ (UINT64_C(1) << 63);
    int i;

    for (i = 7; i >= 0; i--) {
        out[i] = (uint8_t)t;
        t >>= 8;
    }
    memcpy(out + 8, key, KEY_LEN);
}

static int64_t
time_key_stored_at(const uint8_t *time_key)
{
    uint64_t t = 0;
    int i;

    for (i = 0; i < 8; i++)
        t = t << 8 | time_key[i];
    return (int64_t)(t ^ (UINT64_C(1) << 63));
}

/* Write "org/job" in the hyphenated UUID form, for log lines. */
static void
format_key(const uint8_t key[KEY_LEN], char out[2 * JG_UUID_STR_LEN])
{
    jg_uuid_format(key, out);
    out[JG_UUID_STR_LEN - 1] = '/';
    jg_uuid_format(key + JG_UUID_LEN, out + JG_UUID_STR_LEN);
}

static bool
is_expired(const struct jg_cache *cache, int64_t stored_at, int64_t now)
{
    if (cache->ttl_s == 0)
        return false;

    /*
     * Times have whole-second resolution, so an age equal to ttl_s may be
     * anything from ttl_s to ttl_s + 1 seconds. The entry is still fresh
     * then, so it lives at least ttl_s seconds.
     *
     * NOTE: an entry stored in the future is fresh, and stays fresh until
     * ttl_s after its stored-at time. So a wall clock stepped back by D
     * seconds lengthens the life of entries stored before the step by D.
     */
    if (now <= stored_at)
        return false;
    return (uint64_t)now - (uint64_t)stored_at > cache->ttl_s;
}

/* ---- open and close ------------------------------------------------- */

/* Create dir mode 0700 when missing, and reject one others may write to. */
/*
 * Refuse data files that other users may read or write: they hold every
 * organization's cached jobs. jobgate creates them mode 0600; an older or
 * copied file may have another mode.
 */
static int
check_file_modes(const char *dir, char *err, size_t errlen)
{
    static const char *const names[] = {"data.mdb", "lock.mdb"};
    char path[4096];
    struct stat st;
    size_t i;

    for (i = 0; i < JG_ARRAY_LEN(names); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        if (stat(path, &st) != 0)
            continue;
        if (st.st_mode & (S_IROTH | S_IWOTH)) {
            set_error(err, errlen,
                      "cache file %s is open to other users (mode %04o); "
                      "run chmod 600 on it",
                      path, (unsigned int)(st.st_mode & 07777));
            return -1;
        }
    }
    return 0;
}

static int
prepare_dir(const char *dir, char *err, size_t errlen)
{
    struct stat st;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        set_error(err, errlen, "cannot create cache_dir %s: %s", dir,
                  strerror(errno));
        return -1;
    }

    if (stat(dir, &st) != 0) {
        set_error(err, errlen, "cannot stat cache_dir %s: %s", dir,
                  strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        set_error(err, errlen, "cache_dir %s is not a directory", dir);
        return -1;
    }

    /* Anyone who can write there can replace the files under us. */
    if (st.st_mode & S_IWOTH) {
        set_error(err, errlen,
                  "cache_dir %s is world-writable (mode %04o); remove the "
                  "write permission for others or choose another directory",
                  dir, (unsigned int)(st.st_mode & 07777));
        return -1;
    }
    return check_file_modes(dir, err, errlen);
}

static int
open_env(struct jg_cache *cache, uint64_t max_bytes, char *err,
         size_t errlen)
{
    uint64_t psize = (uint64_t)sysconf(_SC_PAGESIZE);
    /* Rounded down, so that max_bytes stays a maximum. */
    uint64_t map_bytes = max_bytes / psize * psize;
    const char *step;
    int dead = 0;
    int rc;

    rc = mdb_env_create(&cache->env);
    if (rc != 0) {
        step = "mdb_env_create";
        goto fail;
    }

    step = "setting the LMDB environment options";
    rc = mdb_env_set_maxdbs(cache->env, 2);
    if (rc == 0)
        rc = mdb_env_set_maxreaders(cache->env, MAX_READERS);
    if (rc == 0)
        rc = mdb_env_set_mapsize(cache->env, (size_t)map_bytes);
    if (rc != 0)
        goto fail;

    /* Without MDB_NOSUBDIR, data.mdb and lock.mdb go inside dir. */
    rc = mdb_env_open(cache->env, cache->dir, MDB_NOTLS, 0600);
    if (rc != 0) {
        step = "mdb_env_open";
        goto fail;
    }

    /*
     * A process killed inside a read transaction leaves its slot holding
     * that snapshot, and its pages can never be reused until the slot is
     * cleared.
     */
    rc = mdb_reader_check(cache->env, &dead);
    if (rc != 0) {
        step = "mdb_reader_check";
        goto fail;
    }
    JG_COUNT_ADD(cache->stats.stale_readers, (uint64_t)dead);
    if (dead > 0)
        jg_log_info("cache %s: cleared %d stale reader slots", cache->dir,
                    dead);
    return 0;

fail:
    set_error(err, errlen, "cache_dir %s: %s failed: %s", cache->dir, step,
              mdb_strerror(rc));
    return -1;
}

static int
open_databases(struct jg_cache *cache, char *err, size_t errlen)
{
    MDB_txn *txn;
    int rc;

    rc = mdb_txn_begin(cache->env, NULL, 0, &txn);
    if (rc != 0)
        goto fail;

    rc = mdb_dbi_open(txn, NULL, 0, &cache->main_dbi);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "entries", MDB_CREATE, &cache->entries);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "by_time", MDB_CREATE, &cache->by_time);
    if (rc != 0) {
        mdb_txn_abort(txn);
        goto fail;
    }

    rc = mdb_txn_commit(txn);
    if (rc != 0)
        goto fail;

    /* Begun once and reset at once: lookups renew it. */
    rc = mdb_txn_begin(cache->env, NULL, MDB_RDONLY, &cache->reader);
    if (rc != 0)
        goto fail;
    mdb_txn_reset(cache->reader);
    return 0;

fail:
    set_error(err, errlen, "cache_dir %s: opening the databases failed: %s",
              cache->dir, mdb_strerror(rc));
    return -1;
}

static void
free_cache(struct jg_cache *cache)
{
    size_t i;

    if (cache->reader != NULL)
        mdb_txn_abort(cache->reader);
    if (cache->env != NULL && !cache->borrowed_env)
        mdb_env_close(cache->env);
    for (i = 0; i < cache->pending_len; i++)
        jg_free(cache->pending[i].value);
    jg_free(cache->pending);
    pthread_mutex_destroy(&cache->pending_lock);
    jg_free(cache->dir);
    jg_free(cache);
}

int
jg_cache_open(struct jg_cache **out, const struct jg_cache_options *opts,
              char *err, size_t errlen)
{
    struct jg_cache *cache;

    *out = NULL;

    if (opts->dir == NULL || opts->dir[0] == '\0') {
        set_error(err, errlen, "cache_dir is empty");
        return -1;
    }
    if (opts->max_bytes < MIN_MAP_BYTES) {
        set_error(err, errlen,
                  "cache_max_bytes %llu is below the minimum of %d bytes",
                  (unsigned long long)opts->max_bytes, MIN_MAP_BYTES);
        return -1;
    }
    if (prepare_dir(opts->dir, err, errlen) != 0)
        return -1;

    cache = jg_calloc(1, sizeof(*cache));
    cache->dir = jg_strdup(opts->dir);
    cache->ttl_s = opts->ttl_s;
    pthread_mutex_init(&cache->pending_lock, NULL);

    if (open_env(cache, opts->max_bytes, err, errlen) != 0 ||
        open_databases(cache, err, errlen) != 0) {
        free_cache(cache);
        return -1;
    }

    *out = cache;
    return 0;
}

struct jg_cache *
jg_cache_share(struct jg_cache *cache)
{
    struct jg_cache *other = jg_calloc(1, sizeof(*other));
    int rc;

    other->env = cache->env;
    other->borrowed_env = true;
    other->main_dbi = cache->main_dbi;
    other->entries = cache->entries;
    other->by_time = cache->by_time;
    other->dir = jg_strdup(cache->dir);
    other->ttl_s = cache->ttl_s;
    pthread_mutex_init(&other->pending_lock, NULL);

    rc = mdb_txn_begin(other->env, NULL, MDB_RDONLY, &other->reader);
    if (rc != 0) {
        jg_log_error("cache %s: cannot begin a read transaction for "
                     "another thread: %s",
                     cache->dir, mdb_strerror(rc));
        free_cache(other);
        return NULL;
    }
    mdb_txn_reset(other->reader);
    cache->shared = true;
    other->shared = true;
    return other;
}

void
jg_cache_close(struct jg_cache *cache)
{
    if (cache == NULL)
        return;

    if (cache->pending_len > 0)
        jg_cache_flush(cache);
    if (cache->reader_active) {
        mdb_txn_reset(cache->reader);
        cache->reader_active = false;
    }
    free_cache(cache);
}

/* ---- transactions --------------------------------------------------- */

/*
 * Make the read transaction active, and set *started when this call renewed
 * it. A lookup made while a hit is held shares the held snapshot, so the
 * hit's pointers stay valid.
 */
static int
reader_begin(struct jg_cache *cache, bool *started)
{
    int rc;

    *started = false;
    if (cache->reader_active)
        return 0;

    rc = mdb_txn_renew(cache->reader);
    if (rc == MDB_MAP_RESIZED && !cache->shared) {
        /* Another process grew the map past ours: adopt its size. */
        rc = mdb_env_set_mapsize(cache->env, 0);
        if (rc == 0)
            rc = mdb_txn_renew(cache->reader);
    }
    if (rc != 0)
        return rc;

    cache->reader_active = true;
    *started = true;
    return 0;
}

static void
reader_end(struct jg_cache *cache, bool started)
{
    if (!started)
        return;
    mdb_txn_reset(cache->reader);
    cache->reader_active = false;
}

/*
 * With MDB_NOTLS a thread may hold the read transaction while it writes,
 * so this works during a hit, but the held snapshot then keeps the pages
 * that the write frees from being reused.
 */
static int
begin_write(struct jg_cache *cache, MDB_txn **txn)
{
    int rc;

    rc = mdb_txn_begin(cache->env, NULL, 0, txn);

    /* Remapping would move the memory that a held hit points into. */
    if (rc == MDB_MAP_RESIZED && !cache->reader_active && !cache->shared) {
        rc = mdb_env_set_mapsize(cache->env, 0);
        if (rc == 0)
            rc = mdb_txn_begin(cache->env, NULL, 0, txn);
    }
    return rc;
}

static size_t
tree_pages(const MDB_stat *st)
{
    return st->ms_branch_pages + st->ms_leaf_pages + st->ms_overflow_pages;
}

/*
 * Sum LMDB's free list, which only a read-only transaction may walk. Its
 * records are keyed by the id of the transaction that freed the pages, and
 * each is an array of page numbers led by their count (the LMDB 0.9
 * format that its mdb_stat -f reads). Pages that readers of older
 * snapshots still hold are counted as reusable.
 */
static int
measure_free_list(MDB_txn *txn, struct usage *u)
{
    size_t last_txnid = mdb_txn_id(txn);
    MDB_cursor *cursor;
    MDB_val k;
    MDB_val v;
    int rc;

    u->free_ready = 0;
    u->free_recent = 0;

    rc = mdb_cursor_open(txn, 0 /* LMDB's free-list database */, &cursor);
    if (rc != 0)
        return rc;
    while ((rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) == 0) {
        size_t txnid;
        size_t pages;

        if (k.mv_size != sizeof(txnid) || v.mv_size < sizeof(size_t))
            continue;
        memcpy(&txnid, k.mv_data, sizeof(txnid));
        pages = v.mv_size / sizeof(size_t) - 1;
        if (txnid < last_txnid)
            u->free_ready += pages;
        else
            u->free_recent += pages;
    }
    mdb_cursor_close(cursor);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Measure the trees in txn's snapshot, the map, and if with_free (txn must
 * then be read-only) the free list. */
static int
measure(struct jg_cache *cache, MDB_txn *txn, bool with_free, struct usage *u)
{
    MDB_stat main_st;
    MDB_stat entry_st;
    MDB_stat time_st;
    MDB_envinfo info;
    int rc;

    rc = mdb_stat(txn, cache->main_dbi, &main_st);
    if (rc == 0)
        rc = mdb_stat(txn, cache->entries, &entry_st);
    if (rc == 0)
        rc = mdb_stat(txn, cache->by_time, &time_st);
    if (rc == 0)
        rc = mdb_env_info(cache->env, &info);
    if (rc != 0)
        return rc;

    u->psize = entry_st.ms_psize;
    u->map_pages = info.me_mapsize / entry_st.ms_psize;
    u->file_pages = info.me_last_pgno + 1;
    u->live_pages = META_PAGES + tree_pages(&main_st) +
                    tree_pages(&entry_st) + tree_pages(&time_st);
    u->entry_leaves = entry_st.ms_leaf_pages;
    u->time_leaves = time_st.ms_leaf_pages;
    u->entry_depth = entry_st.ms_depth;
    u->time_depth = time_st.ms_depth;
    u->entries = entry_st.ms_entries;
    u->free_ready = 0;
    u->free_recent = 0;
    return with_free ? measure_free_list(txn, u) : 0;
}

/*
 * Measure the latest committed state. A held hit's snapshot may be older
 * than the commits since, so a separate read transaction (MDB_NOTLS allows
 * a second one) measures then.
 */
static int
read_usage(struct jg_cache *cache, bool with_free, struct usage *u)
{
    MDB_txn *txn;
    bool started;
    int rc;

    if (cache->reader_active) {
        rc = mdb_txn_begin(cache->env, NULL, MDB_RDONLY, &txn);
        if (rc != 0)
            return rc;
        rc = measure(cache, txn, with_free, u);
        mdb_txn_abort(txn);
        return rc;
    }

    rc = reader_begin(cache, &started);
    if (rc != 0)
        return rc;
    rc = measure(cache, cache->reader, with_free, u);
    reader_end(cache, started);
    return rc;
}

/* Pages the next write can allocate: the map's unused tail and the
 * reusable free-list pages. */
static size_t
pool_pages(const struct usage *u)
{
    size_t tail = u->map_pages > u->file_pages ? u->map_pages - u->file_pages
                                               : 0;

    return tail + u->free_ready;
}

/* The map less the pool: what the high- and low-water marks compare. */
static size_t
used_pages(const struct usage *u)
{
    size_t pool = pool_pages(u);

    return u->map_pages > pool ? u->map_pages - pool : 0;
}

/*
 * Rows one deleting transaction may take, sized so that it leaves
 * RESERVE_PAGES of the pool: each deleted entry copies about one leaf, two
 * when leaves merge, plus one root-to-leaf path per tree.
 */
static size_t
delete_row_cap(const struct usage *u)
{
    size_t pool = pool_pages(u);
    size_t fixed = 2 * ((size_t)u->entry_depth + u->time_depth) + 4 +
                   RESERVE_PAGES;
    size_t cap;

    if (pool < fixed + 2)
        return 1;
    cap = (pool - fixed) / 2;
    return cap < DELETE_ROWS_PER_TXN ? cap : DELETE_ROWS_PER_TXN;
}

/* ---- lookups -------------------------------------------------------- */

enum jg_cache_result
jg_cache_get(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN],
             const uint8_t job[JG_UUID_LEN], int64_t now,
             struct jg_entry *entry)
{
    uint8_t key[KEY_LEN];
    char key_str[2 * JG_UUID_STR_LEN];
    MDB_val k = {.mv_size = KEY_LEN, .mv_data = key};
    MDB_val v;
    enum jg_entry_status status;
    bool started;
    int rc;

    make_key(org, job, key);

    rc = reader_begin(cache, &started);
    if (rc != 0) {
        JG_COUNT(cache->stats.read_errors);
        jg_log_error("cache %s: renewing the read transaction failed: %s",
                     cache->dir, mdb_strerror(rc));
        return JG_CACHE_ERROR;
    }

    rc = mdb_get(cache->reader, cache->entries, &k, &v);
    if (rc == MDB_NOTFOUND) {
        JG_COUNT(cache->stats.misses);
        reader_end(cache, started);
        return JG_CACHE_MISS;
    }
    if (rc != 0) {
        JG_COUNT(cache->stats.read_errors);
        format_key(key, key_str);
        jg_log_error("cache %s: mdb_get of %s failed: %s", cache->dir,
                     key_str, mdb_strerror(rc));
        reader_end(cache, started);
        return JG_CACHE_ERROR;
    }

    /* A corrupt entry stays until the refetch that its miss causes
     * overwrites it. */
    status = jg_entry_decode(v.mv_data, v.mv_size, entry);
    if (status != JG_ENTRY_OK) {
        JG_COUNT(cache->stats.corrupt);
        format_key(key, key_str);
        jg_log_warn("cache %s: entry %s is corrupt (%s); treated as a miss",
                    cache->dir, key_str, jg_entry_status_name(status));
        reader_end(cache, started);
        return JG_CACHE_CORRUPT;
    }

    if (is_expired(cache, entry->stored_at, now)) {
        JG_COUNT(cache->stats.expired);
        reader_end(cache, started);
        return JG_CACHE_EXPIRED;
    }

    /* The transaction stays active: entry points into the map. */
    JG_COUNT(cache->stats.hits);
    return JG_CACHE_HIT;
}

void
jg_cache_release(struct jg_cache *cache)
{
    reader_end(cache, cache->reader_active);
}

static int flush_locked(struct jg_cache *cache);

/* ---- the pending batch ---------------------------------------------- */

static struct pending_write *
find_pending(struct jg_cache *cache, const uint8_t key[KEY_LEN])
{
    size_t i;

    /* Linear: a batch is one event-loop turn's responses, MAX_PENDING at
     * most. */
    for (i = 0; i < cache->pending_len; i++) {
        if (memcmp(cache->pending[i].key, key, KEY_LEN) == 0)
            return &cache->pending[i];
    }
    return NULL;
}

static void
clear_pending(struct jg_cache *cache)
{
    size_t i;

    for (i = 0; i < cache->pending_len; i++)
        jg_free(cache->pending[i].value);
    cache->pending_len = 0;
}

void
jg_cache_put(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN],
             const uint8_t job[JG_UUID_LEN], const struct jg_entry *entry)
{
    struct jg_entry copy = *entry;
    struct pending_write *pw;
    uint8_t key[KEY_LEN];
    char key_str[2 * JG_UUID_STR_LEN];
    size_t len;

    make_key(org, job, key);

    len = jg_entry_encoded_size(copy.content_type_len, copy.body_len);
    if (len == 0) {
        format_key(key, key_str);
        jg_log_warn("cache %s: entry %s not stored: content type of %zu "
                    "bytes or body of %zu bytes is too large to encode",
                    cache->dir, key_str, copy.content_type_len,
                    copy.body_len);
        return;
    }

    pthread_mutex_lock(&cache->pending_lock);
    pw = find_pending(cache, key);
    if (pw == NULL) {
        if (cache->pending_len >= MAX_PENDING)
            flush_locked(cache);
        if (cache->pending_len == cache->pending_cap) {
            cache->pending_cap = cache->pending_cap ? cache->pending_cap * 2
                                                    : 16;
            cache->pending = jg_realloc(
                cache->pending, cache->pending_cap * sizeof(*cache->pending));
        }
        pw = &cache->pending[cache->pending_len++];
        memcpy(pw->key, key, KEY_LEN);
    } else {
        jg_free(pw->value);
    }

    pw->value = jg_malloc(len);
    pw->value_len = len;
    jg_entry_encode(pw->value, &copy);
    pw->stored_at = copy.stored_at;
    pthread_mutex_unlock(&cache->pending_lock);
}

size_t
jg_cache_pending(struct jg_cache *cache)
{
    size_t len;

    pthread_mutex_lock(&cache->pending_lock);
    len = cache->pending_len;
    pthread_mutex_unlock(&cache->pending_lock);
    return len;
}

/* ---- writing -------------------------------------------------------- */

static int
delete_time_row(struct jg_cache *cache, MDB_txn *txn, int64_t stored_at,
                const uint8_t key[KEY_LEN])
{
    uint8_t time_key[TIME_KEY_LEN];
    MDB_val k = {.mv_size = TIME_KEY_LEN, .mv_data = time_key};
    int rc;

    make_time_key(stored_at, key, time_key);
    rc = mdb_del(txn, cache->by_time, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/*
 * Store one entry and its by_time row, deleting the row of the entry it
 * replaces. When the old value is corrupt its stored-at is unknown, and its
 * row is left for eviction to find stale.
 */
static int
store_one(struct jg_cache *cache, MDB_txn *txn, const struct pending_write *pw)
{
    uint8_t time_key[TIME_KEY_LEN];
    MDB_val k = {.mv_size = KEY_LEN, .mv_data = (void *)pw->key};
    MDB_val tk = {.mv_size = TIME_KEY_LEN, .mv_data = time_key};
    MDB_val value = {.mv_size = pw->value_len, .mv_data = pw->value};
    MDB_val empty = {.mv_size = 0, .mv_data = (void *)""};
    MDB_val old;
    struct jg_entry old_entry;
    int rc;

    rc = mdb_get(txn, cache->entries, &k, &old);
    if (rc == 0) {
        if (jg_entry_decode(old.mv_data, old.mv_size, &old_entry) ==
                JG_ENTRY_OK &&
            old_entry.stored_at != pw->stored_at) {
            rc = delete_time_row(cache, txn, old_entry.stored_at, pw->key);
            if (rc != 0)
                return rc;
        }
    } else if (rc != MDB_NOTFOUND) {
        return rc;
    }

    rc = mdb_put(txn, cache->entries, &k, &value, 0);
    if (rc != 0)
        return rc;

    make_time_key(pw->stored_at, pw->key, time_key);
    return mdb_put(txn, cache->by_time, &tk, &empty, 0);
}

static int
write_batch(struct jg_cache *cache)
{
    MDB_txn *txn;
    size_t i;
    int rc;

    rc = begin_write(cache, &txn);
    if (rc != 0)
        return rc;

    for (i = 0; i < cache->pending_len; i++) {
        rc = store_one(cache, txn, &cache->pending[i]);
        if (rc != 0) {
            mdb_txn_abort(txn);
            return rc;
        }
    }

    /* The commit frees txn even when it fails. */
    return mdb_txn_commit(txn);
}

/*
 * NOTE: an estimate, not a bound, of the pages that writing the pending
 * batch allocates. A value that does not fit half a page takes its own
 * overflow pages, as in LMDB 0.9. Smaller nodes count twice their size in
 * leaves. Each entry copies one leaf per tree, up to the tree's leaf count,
 * and each tree copies one root-to-leaf path. A wrong guess costs an
 * MDB_MAP_FULL and one retry after eviction.
 */
static size_t
batch_pages(const struct jg_cache *cache, const struct usage *u)
{
    size_t small_bytes = 0;
    size_t pages = 0;
    size_t i;
    size_t n = cache->pending_len;

    for (i = 0; i < n; i++) {
        size_t value_len = cache->pending[i].value_len;
        size_t node = NODE_HEADER_BYTES + KEY_LEN + value_len;

        if (node > u->psize / 2)
            pages += (value_len + PAGE_HEADER_BYTES + u->psize - 1) /
                     u->psize;
        else
            small_bytes += node;
        small_bytes += NODE_HEADER_BYTES + TIME_KEY_LEN;
    }

    pages += 2 * small_bytes / u->psize + 1;
    pages += n < u->entry_leaves ? n : u->entry_leaves;
    pages += n < u->time_leaves ? n : u->time_leaves;
    /* The paths, the main tree's leaf, and a free-list record. */
    pages += u->entry_depth + u->time_depth + 2;
    return pages;
}

/* ---- eviction ------------------------------------------------------- */

/*
 * Delete the by_time row under cursor, and its entry unless the entry was
 * rewritten at another time (then the row was stale). A corrupt entry goes
 * too: its time is unknown and it is useless.
 */
static int
evict_row(struct jg_cache *cache, MDB_txn *txn, MDB_cursor *cursor,
          const MDB_val *row, uint64_t *evicted)
{
    uint8_t key[KEY_LEN];
    MDB_val k = {.mv_size = KEY_LEN, .mv_data = key};
    MDB_val v;
    struct jg_entry entry;
    int64_t stored_at;
    int rc;

    /* Copied: the row's memory is gone once anything is deleted. */
    stored_at = time_key_stored_at(row->mv_data);
    memcpy(key, (const uint8_t *)row->mv_data + 8, KEY_LEN);

    rc = mdb_get(txn, cache->entries, &k, &v);
    if (rc == 0) {
        if (jg_entry_decode(v.mv_data, v.mv_size, &entry) != JG_ENTRY_OK ||
            entry.stored_at == stored_at) {
            rc = mdb_del(txn, cache->entries, &k, NULL);
            if (rc != 0)
                return rc;
            (*evicted)++;
        }
    } else if (rc != MDB_NOTFOUND) {
        return rc;
    }

    return mdb_cursor_del(cursor, 0);
}

/* One eviction transaction: what it is asked to do, and what it did. */
struct evict_step {
    int64_t now;
    size_t goal_pages; /* live pages to free */
    size_t min_rows;   /* rows to delete even once goal_pages is met */
    size_t max_rows;
    size_t rows;       /* by_time rows deleted */
    bool more_expired; /* stopped at max_rows on an expired row */
};

/*
 * Walk by_time from its oldest row, deleting expired rows and then old ones
 * until goal_pages live pages are freed, within min_rows and max_rows.
 * Expired rows sort before all others, so all of them go first.
 */
static int
evict_txn(struct jg_cache *cache, struct evict_step *step)
{
    MDB_txn *txn;
    MDB_cursor *cursor = NULL;
    MDB_val row;
    MDB_val v;
    struct usage u;
    size_t live_before;
    uint64_t evicted = 0;
    int rc;

    step->rows = 0;
    step->more_expired = false;

    rc = begin_write(cache, &txn);
    if (rc != 0)
        return rc;
    rc = measure(cache, txn, false, &u);
    if (rc == 0)
        rc = mdb_cursor_open(txn, cache->by_time, &cursor);
    if (rc != 0)
        goto fail;
    live_before = u.live_pages;

    rc = mdb_cursor_get(cursor, &row, &v, MDB_FIRST);
    while (rc == 0) {
        bool wellformed = row.mv_size == TIME_KEY_LEN;
        bool expired = wellformed &&
                       is_expired(cache, time_key_stored_at(row.mv_data),
                                  step->now);

        if (step->rows == step->max_rows) {
            step->more_expired = expired;
            break;
        }
        if (!expired && step->rows >= step->min_rows) {
            rc = measure(cache, txn, false, &u);
            if (rc != 0 || live_before >= u.live_pages + step->goal_pages)
                break;
        }

        if (wellformed)
            rc = evict_row(cache, txn, cursor, &row, &evicted);
        else
            rc = mdb_cursor_del(cursor, 0); /* not written by jobgate */
        if (rc != 0)
            break;
        step->rows++;

        /* After a delete, MDB_NEXT returns the row that moved under the
         * cursor. */
        rc = mdb_cursor_get(cursor, &row, &v, MDB_NEXT);
    }
    if (rc != 0 && rc != MDB_NOTFOUND)
        goto fail;

    mdb_cursor_close(cursor);
    rc = mdb_txn_commit(txn);
    if (rc != 0)
        return rc;
    JG_COUNT_ADD(cache->stats.evicted, evicted);
    return 0;

fail:
    if (cursor != NULL)
        mdb_cursor_close(cursor);
    mdb_txn_abort(txn);
    return rc;
}

/*
 * Evict until at most target pages are used, expired entries first and
 * all of them. The pages that a commit frees become reusable two commits
 * later, so the pages freed by the last commit count toward the goal. While
 * the goal is unmet, each transaction deletes at least one row, and its
 * commit makes those pages reusable.
 */
static int
evict(struct jg_cache *cache, size_t target)
{
    struct evict_step step = {.now = jg_wall_s(), .more_expired = true};
    uint64_t before = cache->stats.evicted;
    struct usage u;
    size_t used;
    size_t i;
    int rc = 0;

    for (i = 0; i < DELETE_MAX_TXNS; i++) {
        rc = read_usage(cache, true, &u);
        if (rc != 0)
            break;
        used = used_pages(&u);
        if (used <= target && !step.more_expired)
            break;

        step.goal_pages = used > target + u.free_recent
                              ? used - target - u.free_recent
                              : 0;
        step.min_rows = used > target ? 1 : 0;
        step.max_rows = delete_row_cap(&u);
        rc = evict_txn(cache, &step);
        if (rc != 0 || step.rows == 0)
            break;
    }

    jg_log_debug("cache %s: evicted %llu entries in %zu transactions",
                 cache->dir,
                 (unsigned long long)(cache->stats.evicted - before), i);
    return rc;
}

/*
 * Make room for the pending batch: evict when writing it would take the
 * used pages past the high-water mark, or when forced after MDB_MAP_FULL.
 * Returns MDB_MAP_FULL for a batch too large to ever fit.
 */
static int
make_room(struct jg_cache *cache, bool forced)
{
    struct usage u;
    size_t need;
    size_t high;
    size_t low;
    size_t target;
    int rc;

    rc = read_usage(cache, false, &u);
    if (rc != 0)
        return rc;
    need = batch_pages(cache, &u);
    high = u.map_pages * HIGH_WATER_PCT / 100;
    low = u.map_pages * LOW_WATER_PCT / 100;
    if (need > low)
        return MDB_MAP_FULL;

    /* Used pages never exceed the file's, so while the file is small the
     * free list need not be read. */
    if (!forced && u.file_pages + need <= high)
        return 0;

    rc = read_usage(cache, true, &u);
    if (rc != 0)
        return rc;
    if (!forced && used_pages(&u) + need <= high)
        return 0;

    /*
     * After MDB_MAP_FULL the measure was wrong: a reader holds free pages,
     * or a large value found no run of free pages long enough. Make room
     * for the batch however full the map looks.
     */
    target = low - need;
    if (forced && used_pages(&u) < low)
        target = used_pages(&u) > need ? used_pages(&u) - need : 0;

    rc = evict(cache, target);
    if (rc == MDB_MAP_FULL && !cache->map_full_logged) {
        jg_log_error("cache %s: the map is too full for eviction to run, "
                     "because LMDB needs free pages to delete; restart "
                     "with a larger cache_max_bytes or an empty cache_dir",
                     cache->dir);
        cache->map_full_logged = true;
    }
    return rc;
}

/* Count a batch that found no room, and log it once until a later commit
 * succeeds. */
static void
drop_map_full(struct jg_cache *cache)
{
    JG_COUNT_ADD(cache->stats.dropped_map_full, cache->pending_len);
    if (!cache->map_full_logged)
        jg_log_warn("cache %s: no room in the map for %zu entries after "
                    "eviction; dropped them, and later drops are only "
                    "counted until a write succeeds",
                    cache->dir, cache->pending_len);
    cache->map_full_logged = true;
}

static int
flush_locked(struct jg_cache *cache)
{
    size_t count = cache->pending_len;
    int dead = 0;
    int rc;

    if (count == 0)
        return 0;

    rc = make_room(cache, false);
    if (rc == 0)
        rc = write_batch(cache);

    if (rc == MDB_MAP_FULL) {
        /* A dead process's reader slot may be what keeps free pages from
         * reuse. */
        if (mdb_reader_check(cache->env, &dead) == 0 && dead > 0) {
            JG_COUNT_ADD(cache->stats.stale_readers, (uint64_t)dead);
            jg_log_info("cache %s: cleared %d stale reader slots",
                        cache->dir, dead);
        }

        rc = make_room(cache, true);
        if (rc == 0)
            rc = write_batch(cache);
        if (rc == MDB_MAP_FULL) {
            drop_map_full(cache);
            clear_pending(cache);
            return 0;
        }
    }

    if (rc != 0) {
        JG_COUNT(cache->stats.write_errors);
        jg_log_error("cache %s: writing %zu entries failed: %s; dropped",
                     cache->dir, count, mdb_strerror(rc));
        clear_pending(cache);
        return -1;
    }

    JG_COUNT_ADD(cache->stats.writes, count);
    cache->map_full_logged = false;
    clear_pending(cache);
    return (int)count;
}

int
jg_cache_flush(struct jg_cache *cache)
{
    int rc;

    pthread_mutex_lock(&cache->pending_lock);
    rc = flush_locked(cache);
    pthread_mutex_unlock(&cache->pending_lock);
    return rc;
}

/* ---- purges --------------------------------------------------------- */

enum purge_scope {
    PURGE_JOB,
    PURGE_ORG,
};

static bool
key_in_scope(const uint8_t key[KEY_LEN], enum purge_scope scope,
             const uint8_t id[JG_UUID_LEN])
{
    if (scope == PURGE_ORG)
        return memcmp(key, id, JG_UUID_LEN) == 0;
    return memcmp(key + JG_UUID_LEN, id, JG_UUID_LEN) == 0;
}

/* Queued writes in scope are discarded too, or the next flush would store
 * what was just purged. */
static void
purge_pending(struct jg_cache *cache, enum purge_scope scope,
              const uint8_t id[JG_UUID_LEN])
{
    size_t i = 0;

    while (i < cache->pending_len) {
        struct pending_write *pw = &cache->pending[i];

        if (!key_in_scope(pw->key, scope, id)) {
            i++;
            continue;
        }
        jg_free(pw->value);
        *pw = cache->pending[--cache->pending_len];
    }
}

/* Delete the entry under cursor and its by_time row. */
static int
purge_entry(struct jg_cache *cache, MDB_txn *txn, MDB_cursor *cursor,
            const MDB_val *k, const MDB_val *v)
{
    uint8_t key[KEY_LEN];
    struct jg_entry entry;
    int rc;

    memcpy(key, k->mv_data, KEY_LEN);
    if (jg_entry_decode(v->mv_data, v->mv_size, &entry) == JG_ENTRY_OK) {
        rc = delete_time_row(cache, txn, entry.stored_at, key);
        if (rc != 0)
            return rc;
    }
    return mdb_cursor_del(cursor, 0);
}

/* A purge in progress, run as transactions sized like eviction's. */
struct purge_state {
    enum purge_scope scope;
    const uint8_t *id;
    uint8_t resume[KEY_LEN]; /* where the next transaction starts */
    bool resuming;
    bool done;
    long count;
};

/*
 * One purge transaction of at most max_rows deletions. Entries of one
 * organization are adjacent, so an org purge starts at its 16-byte prefix
 * (MDB_SET_RANGE) and stops at the first other org. The job id is the
 * second half of the key, so a job purge reads every entry.
 */
static int
purge_txn(struct jg_cache *cache, struct purge_state *ps, size_t max_rows)
{
    MDB_txn *txn;
    MDB_cursor *cursor = NULL;
    MDB_val k = {.mv_size = KEY_LEN, .mv_data = ps->resume};
    MDB_val v;
    MDB_cursor_op op = MDB_SET_RANGE;
    size_t rows = 0;
    int rc;

    if (!ps->resuming && ps->scope == PURGE_ORG)
        k = (MDB_val){.mv_size = JG_UUID_LEN, .mv_data = (void *)ps->id};
    else if (!ps->resuming)
        op = MDB_FIRST;

    rc = begin_write(cache, &txn);
    if (rc != 0)
        return rc;
    rc = mdb_cursor_open(txn, cache->entries, &cursor);
    if (rc != 0)
        goto fail;

    ps->done = true;
    rc = mdb_cursor_get(cursor, &k, &v, op);
    while (rc == 0) {
        bool match = k.mv_size == KEY_LEN &&
                     key_in_scope(k.mv_data, ps->scope, ps->id);

        if (!match && ps->scope == PURGE_ORG)
            break;
        if (match && rows == max_rows) {
            memcpy(ps->resume, k.mv_data, KEY_LEN);
            ps->resuming = true;
            ps->done = false;
            break;
        }
        if (match) {
            rc = purge_entry(cache, txn, cursor, &k, &v);
            if (rc != 0)
                break;
            rows++;
        }
        rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
    }
    if (rc != 0 && rc != MDB_NOTFOUND)
        goto fail;

    mdb_cursor_close(cursor);
    rc = mdb_txn_commit(txn);
    if (rc != 0)
        return rc;
    ps->count += (long)rows;
    return 0;

fail:
    if (cursor != NULL)
        mdb_cursor_close(cursor);
    mdb_txn_abort(txn);
    return rc;
}

static long
purge(struct jg_cache *cache, enum purge_scope scope,
      const uint8_t id[JG_UUID_LEN])
{
    struct purge_state ps = {.scope = scope, .id = id};
    const char *scope_name = scope == PURGE_ORG ? "organization" : "job";
    char id_str[JG_UUID_STR_LEN];
    struct usage u;
    size_t i;
    int rc = 0;

    pthread_mutex_lock(&cache->pending_lock);
    purge_pending(cache, scope, id);
    pthread_mutex_unlock(&cache->pending_lock);

    for (i = 0; i < DELETE_MAX_TXNS && !ps.done; i++) {
        rc = read_usage(cache, true, &u);
        if (rc == 0)
            rc = purge_txn(cache, &ps, delete_row_cap(&u));
        if (rc != 0)
            break;
    }

    jg_uuid_format(id, id_str);
    if (rc != 0) {
        jg_log_error("cache %s: purging %s %s failed after %ld entries: %s",
                     cache->dir, scope_name, id_str, ps.count,
                     mdb_strerror(rc));
        return -1;
    }
    if (!ps.done)
        jg_log_warn("cache %s: purging %s %s stopped after %zu "
                    "transactions and %ld entries; purge it again",
                    cache->dir, scope_name, id_str, i, ps.count);
    return ps.count;
}

long
jg_cache_purge_job(struct jg_cache *cache, const uint8_t job[JG_UUID_LEN])
{
    return purge(cache, PURGE_JOB, job);
}

long
jg_cache_purge_org(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN])
{
    return purge(cache, PURGE_ORG, org);
}

/* ---- introspection -------------------------------------------------- */

void
jg_cache_drop_pending(struct jg_cache *cache, const uint8_t id[JG_UUID_LEN],
                      bool by_org)
{
    pthread_mutex_lock(&cache->pending_lock);
    purge_pending(cache, by_org ? PURGE_ORG : PURGE_JOB, id);
    pthread_mutex_unlock(&cache->pending_lock);
}

const struct jg_cache_stats *
jg_cache_stats(const struct jg_cache *cache)
{
    return &cache->stats;
}

uint64_t
jg_cache_entries(struct jg_cache *cache)
{
    struct usage u;
    int rc;

    rc = read_usage(cache, false, &u);
    if (rc != 0) {
        jg_log_error("cache %s: reading the entry count failed: %s",
                     cache->dir, mdb_strerror(rc));
        return 0;
    }
    return u.entries;
}

uint64_t
jg_cache_used_bytes(struct jg_cache *cache)
{
    struct usage u;
    size_t free_pages;
    int rc;

    rc = read_usage(cache, true, &u);
    if (rc != 0) {
        jg_log_error("cache %s: reading the map usage failed: %s",
                     cache->dir, mdb_strerror(rc));
        return 0;
    }
    free_pages = u.free_ready + u.free_recent;
    if (free_pages > u.file_pages)
        return 0;
    return (uint64_t)(u.file_pages - free_pages) * u.psize;
}
