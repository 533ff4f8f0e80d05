/*
 * The terminal-response cache, an LMDB environment under cache_dir.
 *
 * Keys are 32 bytes, the organization id then the job id. Values are
 * jg_entry encodings. A second database, ordered by store time, makes
 * eviction of expired and then oldest entries cheap once the map passes its
 * high-water mark. Writes are queued and committed together by
 * jg_cache_flush(), which the server calls once per event-loop turn.
 *
 * A handle serves one thread; jg_cache_share() makes one for each further
 * thread. Several processes may share one directory, and should give it
 * the same max_bytes, because each evicts against its own map size. A process opens
 * a directory once, after any fork(): LMDB's file locks break when one
 * process opens an environment twice, and an environment must not be used
 * across fork().
 */
#ifndef JOBGATE_JG_CACHE_H
#define JOBGATE_JG_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobgate/jg_entry.h"
#include "jobgate/jg_uuid.h"

/* A cache key: the organization id, then the job id. */
#define JG_CACHE_KEY_LEN (2 * JG_UUID_LEN)

struct jg_cache;

struct jg_cache_options {
    const char *dir;
    uint64_t max_bytes;  /* LMDB map size; the hard size of the cache */
    uint64_t ttl_s;      /* entries older than this are misses; 0: none */
};

/* Counters, only ever increased; read by the metrics page. */
struct jg_cache_stats {
    uint64_t hits;
    uint64_t misses;
    uint64_t expired;
    uint64_t corrupt;          /* failed checksum, truncated or unknown version */
    uint64_t read_errors;      /* lookups that failed inside LMDB */
    uint64_t writes;           /* entries committed */
    uint64_t write_errors;     /* commits that failed for another reason */
    uint64_t dropped_map_full; /* entries not stored because the map was full */
    uint64_t evicted;          /* entries removed to make room */
    uint64_t stale_readers;    /* dead processes' reader slots cleared */
};

enum jg_cache_result {
    JG_CACHE_HIT = 0,
    JG_CACHE_MISS,
    JG_CACHE_EXPIRED,
    JG_CACHE_CORRUPT,
    JG_CACHE_ERROR,
};

/*
 * Open or create the environment. The directory is created mode 0700 when
 * missing and the files are created mode 0600; a world-writable directory
 * and a max_bytes below 1 MiB are rejected. Returns 0, or -1 with a
 * message naming the directory in err.
 */
int jg_cache_open(struct jg_cache **out, const struct jg_cache_options *opts,
                  char *err, size_t errlen);

/*
 * Another handle on an open cache, for another thread. It shares the
 * environment and its databases and has its own read transaction, write
 * batch and counters; LMDB serialises the commits of all handles. Each
 * handle takes one of LMDB's reader slots. Returns NULL after logging why.
 * Close every shared handle before the cache it came from.
 */
struct jg_cache *jg_cache_share(struct jg_cache *cache);

/* Flush pending writes, end any held hit, and close. */
void jg_cache_close(struct jg_cache *cache);

/*
 * Look up (org, job) at wall-clock time now. On JG_CACHE_HIT, entry points
 * into LMDB's memory map and stays valid only until jg_cache_release(),
 * which the caller must call before returning to the event loop. On every
 * other result nothing needs releasing and entry must not be read. A stored
 * time later than now counts as fresh. Lookups made while a hit is held
 * read the same snapshot and leave the held entry valid. Each lookup adds
 * one to exactly one of hits, misses, expired, corrupt and read_errors.
 */
enum jg_cache_result jg_cache_get(struct jg_cache *cache,
                                  const uint8_t org[JG_UUID_LEN],
                                  const uint8_t job[JG_UUID_LEN], int64_t now,
                                  struct jg_entry *entry);
void jg_cache_release(struct jg_cache *cache);

/*
 * Queue entry for (org, job); the content type and body are copied. A later
 * put of the same key in the same batch replaces the earlier one.
 */
void jg_cache_put(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN],
                  const uint8_t job[JG_UUID_LEN],
                  const struct jg_entry *entry);

/* Number of writes queued and not yet committed. */
size_t jg_cache_pending(struct jg_cache *cache);

/*
 * Commit the queued writes in one transaction, evicting first when the map
 * is above its high-water mark. A full map drops the writes and counts
 * them. Returns the number of entries committed (0 when dropped), or -1 on
 * another error, which also drops them. Call it with no hit held: a held
 * snapshot keeps the pages that eviction frees from being reused.
 */
int jg_cache_flush(struct jg_cache *cache);

/* Delete every entry of one job, or of one organization, and discard the
 * queued writes for it. Returns the count of stored entries removed, or -1
 * on error. */
long jg_cache_purge_job(struct jg_cache *cache, const uint8_t job[JG_UUID_LEN]);
long jg_cache_purge_org(struct jg_cache *cache, const uint8_t org[JG_UUID_LEN]);

/*
 * Discard the queued writes of one job, or of one organization (by_org),
 * from another thread than the handle's: for a purge, which must also
 * reach the batches of the other workers. A commit in progress on the
 * handle finishes first.
 */
void jg_cache_drop_pending(struct jg_cache *cache,
                           const uint8_t id[JG_UUID_LEN], bool by_org);

const struct jg_cache_stats *jg_cache_stats(const struct jg_cache *cache);

/*
 * Entries currently stored, and bytes of the map's pages that hold data:
 * the data file's pages less those on LMDB's free list, which it reuses.
 * Both return 0 on error.
 */
uint64_t jg_cache_entries(struct jg_cache *cache);
uint64_t jg_cache_used_bytes(struct jg_cache *cache);

#endif
