/*
 * The cached job route, GET /v2/org-jobs/{job_id} and its /public alias.
 *
 * Each client request moves through one state machine: validated, looked
 * up, then either answered from the cache or, on a miss, waiting on a
 * shared upstream fetch (a "flight") that it leads or joined, then
 * replying, then done. set_state() is the one place a state changes, and
 * it logs the move at debug level.
 *
 * A flight is shared by callers of one proven organization, or of one
 * credential when the caller is unproven, proven for several organizations
 * or share_scope is "credential". When the fetch ends, every waiter is
 * answered in the same loop turn. A waiter that may not see the answer (a
 * 401 or 403 earned by another credential, or a job of an organization its
 * credential is not proven for) sends a fetch of its own instead.
 *
 * The flight table is shared by every worker of the process, behind one
 * lock, so a request may wait on a flight that another worker leads. The
 * leader's worker answers its own waiters, and posts each other waiter to
 * its worker with a copy of the outcome, because a connection is only
 * written by the thread that accepted it.
 *
 * A client that disconnects while waiting stays in its flight: the HTTP
 * server keeps the request until it is answered exactly once and notices
 * the closed connection only then, so a waiter never frees anything
 * another waiter uses. The fetch itself continues, since its answer may be
 * cached.
 */
#include <sys/queue.h>

#include <pthread.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <strings.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobgate/jg_cache.h"
#include "jobgate/jg_http.h"
#include "jobgate/jg_inspect.h"
#include "jobgate/jg_log.h"
#include "jobgate/jg_principal.h"
#include "jobgate/jg_request.h"
#include "jobgate/jg_route.h"
#include "jobgate/jg_server.h"
#include "jobgate/jg_upstream.h"
#include "jobgate/jg_util.h"
#include "jobgate/jg_uuid.h"

enum job_state {
    JOB_VALIDATED,
    JOB_LOOKED_UP,
    JOB_WAITING,   /* joined a flight led by another request */
    JOB_FETCHING,  /* leads a flight */
    JOB_REPLYING,
    JOB_DONE,
};

static const char *const state_names[] = {
    "validated", "looked-up", "waiting", "fetching", "replying", "done",
};

enum flight_kind {
    FLIGHT_ORG = 1,
    FLIGHT_CREDENTIAL,
};

struct flight_key {
    uint8_t kind;
    uint8_t id[JG_CRED_HASH_LEN]; /* org id (16 bytes, zero padded) or hash */
    uint8_t job[JG_UUID_LEN];
};

struct job_request;

struct jg_flight {
    struct jg_flight *next;       /* bucket chain */
    struct jg_server *srv;
    struct flight_key key;
    bool in_table;                /* solo fetches are never joined */
    struct job_request *waiters;  /* the leader first */
    struct job_request **tail;
    size_t waiter_count;
    bool leader_has_cred;
    uint8_t leader_cred[JG_CRED_HASH_LEN];
    uint8_t leader_owner[JG_ENTRY_OWNER_LEN];
    uint64_t forget_epoch;        /* the shared forget_epoch when the fetch
                                     began */
    uint8_t job[JG_UUID_LEN];
    /*
     * Set when the answer was queued for the cache: the flight stays in
     * the table, and later misses take this outcome, until the write is
     * committed and a lookup finds the entry.
     */
    struct shared_outcome *settled;
    struct jg_flight *next_settled; /* the worker's list of such flights */
};

struct job_request {
    struct jg_server *srv;
    struct jg_http_request *req;
    enum job_state state;
    const char *route;            /* "job" or "public-job" */
    const char *target;           /* path and query, forwarded as received;
                                     owned by the HTTP request */
    int path_len;                 /* the target up to its query */
    bool on_heap;                 /* misses live on; hits are on the stack */
    uint8_t job[JG_UUID_LEN];
    bool has_cred;
    uint8_t cred[JG_CRED_HASH_LEN];
    const char *cred_header;      /* the header the credential came from */
    uint8_t owner[JG_ENTRY_OWNER_LEN]; /* zeros unless share_scope=credential */
    bool refresh;                 /* client sent Cache-Control: no-cache */
    bool only_if_cached;
    bool stale;                   /* the entry found had expired */
    bool collapsed;               /* joined a flight it did not start */
    struct jg_flight *flight;
    struct job_request *next_waiter;
    struct shared_outcome *remote_outcome; /* set while posted to this
                                              request's worker */
    uint64_t settle_gen;          /* the shared settle_gen before the cache
                                     lookup */
    uint64_t started_ms;
};

/*
 * The outcome of one finished fetch, as its waiters see it. For waiters on
 * the flight's own worker it points into the upstream response; for those
 * on other workers into a copy (struct shared_outcome).
 */
struct outcome {
    enum jg_fetch_error error;
    uint64_t elapsed_ms;
    const struct evkeyvalq *headers;
    int status;
    const char *body;
    size_t body_len;
    bool org_valid;
    uint8_t org[JG_UUID_LEN];
    bool stored;
    const char *detail;           /* why the answer was not stored; static */
    bool leader_has_cred;
    uint8_t leader_cred[JG_CRED_HASH_LEN];
    uint8_t owner[JG_ENTRY_OWNER_LEN]; /* the owner tag of a stored entry */
};

/* An outcome copied for the waiters on other workers. */
struct shared_outcome {
    struct outcome oc;
    struct evkeyvalq headers;
    char *body;
    size_t refs;                  /* atomic: remote waiters not yet answered */
};

static struct jg_flight *flight_new(struct job_request *jr);
static void flight_fetch(struct jg_flight *flight, struct job_request *jr);
static void flight_start(struct job_request *jr);
static void deliver(struct job_request *jr, const struct outcome *oc);
static void reply_upstream(struct job_request *jr, const struct outcome *oc);
static void release_outcome(struct shared_outcome *so);

/*
 * Write the credential fingerprint for a log line, or return "-". It is
 * formatted only when a line is written, so hits cost nothing for it when
 * the access log is off (log_level below info).
 */
static const char *
fingerprint_of(const struct job_request *jr,
               char out[JG_CRED_FINGERPRINT_LEN])
{
    if (!jr->has_cred)
        return "-";
    jg_principals_fingerprint(jr->cred, out);
    return out;
}

static void
set_state(struct job_request *jr, enum job_state next)
{
    char fingerprint[JG_CRED_FINGERPRINT_LEN];

    if (!jg_log_enabled(JG_LOG_DEBUG)) {
        jr->state = next;
        return;
    }
    jg_log_debug("job %.*s cred=%s: %s -> %s", jr->path_len, jr->target,
                 fingerprint_of(jr, fingerprint),
                 state_names[jr->state], state_names[next]);
    jr->state = next;
}

static void
job_request_free(struct job_request *jr)
{
    if (jr->on_heap)
        jg_free(jr);
}

/*
 * Write the access line of a request. It runs before the reply is sent,
 * because the target lives in the HTTP request, which the reply ends.
 */
static void
job_request_log(const struct job_request *jr, int status, const char *cache,
                long upstream_ms)
{
    char fingerprint[JG_CRED_FINGERPRINT_LEN];

    if (!jg_log_enabled(JG_LOG_INFO))
        return;
    jg_access_log(jr->route, "GET", status, cache, upstream_ms,
                  jg_now_ms() - jr->started_ms,
                  jr->has_cred ? fingerprint_of(jr, fingerprint) : NULL,
                  jr->target);
}

/* Finish a request after its reply was sent. */
static void
job_request_done(struct job_request *jr)
{
    struct jg_server *srv = jr->srv;

    set_state(jr, JOB_DONE);
    job_request_free(jr);
    jg_server_request_done(srv);
}

/* If-None-Match uses the weak comparison: "W/" prefixes are ignored. */
static bool
etag_matches(const char *if_none_match, const char *etag)
{
    size_t n = strlen(etag);
    const char *p = if_none_match;

    while (*p != '\0') {
        size_t len;

        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        len = strcspn(p, ",");
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if ((len == 1 && p[0] == '*') ||
            (len == n && memcmp(p, etag, n) == 0))
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

/* ---- hits ---------------------------------------------------------- */

/* Write value in decimal with a NUL; out has room for 21 bytes. */
static void
format_decimal(char *out, size_t size, uint64_t value)
{
    char digits[20];
    size_t n = 0;
    size_t i = 0;

    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value > 0);
    while (n > 0 && i + 1 < size)
        out[i++] = digits[--n];
    out[i] = '\0';
}

static void
reply_hit(struct job_request *jr, const struct jg_entry *entry, int64_t now)
{
    const char *inm = jg_http_find(jr->req, "If-None-Match");
    char etag[JG_ENTRY_ETAG_STR_LEN];
    char ctype[256];
    char age[24];
    int status = entry->http_status;

    set_state(jr, JOB_REPLYING);
    jg_entry_format_etag(entry, etag);
    format_decimal(age, sizeof(age),
                   now > entry->stored_at ? (uint64_t)(now - entry->stored_at)
                                          : 0);
    jg_http_add_header(jr->req, "Cache-Status", "jobgate; hit");
    jg_http_add_header(jr->req, "Age", age);
    jg_http_add_header(jr->req, "ETag", etag);

    if (inm != NULL && etag_matches(inm, etag)) {
        JG_COUNT(jr->srv->metrics.not_modified);
        job_request_log(jr, 304, "hit", -1);
        jg_server_reply(jr->srv, jr->req, 304, NULL, 0);
        job_request_done(jr);
        return;
    }

    /* Entries are stored only with a content type below 256 bytes. */
    memcpy(ctype, entry->content_type,
           entry->content_type_len < sizeof(ctype) ? entry->content_type_len
                                                   : sizeof(ctype) - 1);
    ctype[entry->content_type_len < sizeof(ctype) ? entry->content_type_len
                                                  : sizeof(ctype) - 1] = '\0';
    jg_http_add_header(jr->req, "Content-Type", ctype);
    job_request_log(jr, status, "hit", -1);
    jg_server_reply(jr->srv, jr->req, status, entry->body, entry->body_len);
    job_request_done(jr);
}

/*
 * Look the job up under every organization the credential is proven for.
 * Returns true when the request was answered from the cache.
 */
static bool
lookup(struct job_request *jr)
{
    struct jg_server *srv = jr->srv;
    uint8_t orgs[JG_PRINCIPAL_MAX_ORGS][JG_UUID_LEN];
    uint64_t now_ms = jg_now_ms();
    int64_t wall = jg_wall_s();
    size_t count;
    size_t i;

    count = jg_principals_orgs(srv->principals, jr->cred, now_ms, orgs,
                               JG_PRINCIPAL_MAX_ORGS);
    if (count == 0) {
        JG_COUNT(srv->metrics.unproven_misses);
        return false;
    }

    for (i = 0; i < count; i++) {
        struct jg_entry entry;
        enum jg_cache_result res;

        res = jg_cache_get(srv->cache, orgs[i], jr->job, wall, &entry);
        if (res == JG_CACHE_HIT &&
            memcmp(entry.owner, jr->owner, JG_ENTRY_OWNER_LEN) != 0) {
            /* Another credential fetched it, and entries are not shared. */
            jg_cache_release(srv->cache);
            continue;
        }
        if (res == JG_CACHE_HIT) {
            JG_COUNT(srv->metrics.cache_hits);
            reply_hit(jr, &entry, wall);
            jg_cache_release(srv->cache);
            return true;
        }
        if (res == JG_CACHE_EXPIRED)
            jr->stale = true;
    }
    return false;
}

/* ---- flights ------------------------------------------------------- */

static uint64_t
flight_hash(const struct flight_key *key)
{
    const uint8_t *p = (const uint8_t *)key;
    uint64_t h = 1469598103934665603ULL;
    size_t i;

    /* FNV-1a: the key bytes are already uniform hashes or random UUIDs. */
    for (i = 0; i < sizeof(*key); i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* The table's slot for key. Call with the flights lock held. */
static struct jg_flight **
flight_slot(struct jg_shared *sh, const struct flight_key *key)
{
    struct jg_flight **slot;

    slot = &sh->flights[flight_hash(key) % sh->flight_buckets];
    while (*slot != NULL && memcmp(&(*slot)->key, key, sizeof(*key)) != 0)
        slot = &(*slot)->next;
    return slot;
}

/* Call with the flights lock held. */
static void
flight_unlink(struct jg_flight *flight)
{
    struct jg_shared *sh = flight->srv->shared;
    struct jg_flight **slot;

    if (!flight->in_table)
        return;
    slot = flight_slot(sh, &flight->key);
    *slot = flight->next;
    flight->in_table = false;
    sh->flight_count--;
}

/*
 * Choose whom this miss may share a fetch with: everyone proven for its one
 * organization, or only its own credential. Returns false when the request
 * must fetch alone (no credential at all).
 */
static bool
flight_key_for(struct job_request *jr, struct flight_key *key)
{
    struct jg_server *srv = jr->srv;
    uint8_t orgs[JG_PRINCIPAL_MAX_ORGS][JG_UUID_LEN];
    size_t count;

    memset(key, 0, sizeof(*key));
    memcpy(key->job, jr->job, JG_UUID_LEN);
    if (!jr->has_cred)
        return false;

    count = 0;
    if (srv->cfg.share_scope == JG_SHARE_ORG)
        count = jg_principals_orgs(srv->principals, jr->cred,
                                   jg_now_ms(), orgs,
                                   JG_PRINCIPAL_MAX_ORGS);
    if (count == 1) {
        key->kind = FLIGHT_ORG;
        memcpy(key->id, orgs[0], JG_UUID_LEN);
    } else {
        key->kind = FLIGHT_CREDENTIAL;
        memcpy(key->id, jr->cred, JG_CRED_HASH_LEN);
    }
    return true;
}

static void
flight_add_waiter(struct jg_flight *flight, struct job_request *jr)
{
    jr->flight = flight;
    jr->next_waiter = NULL;
    *flight->tail = jr;
    flight->tail = &jr->next_waiter;
    flight->waiter_count++;
}

/*
 * May jr take an answer kept for the cache? The rule of a cache hit: the
 * credential is proven now for the job's organization, and with
 * share_scope = credential the answer was fetched with the same one. A
 * credential forgotten after a 401 is proven for nothing.
 */
static bool
may_take_kept(const struct job_request *jr, const struct outcome *oc)
{
    return oc->org_valid && jr->has_cred &&
           memcmp(jr->owner, oc->owner, JG_ENTRY_OWNER_LEN) == 0 &&
           jg_principals_allows(jr->srv->principals, jr->cred, oc->org,
                                jg_now_ms());
}

/*
 * The answer kept for jr's job under key or, for a credential proven
 * since its first fetch, under the key of the credential itself, with a
 * reference taken; NULL when there is none. Call with the flights lock
 * held.
 */
static struct shared_outcome *
find_kept(struct jg_shared *sh, const struct job_request *jr,
          const struct flight_key *key)
{
    struct jg_flight *flight = *flight_slot(sh, key);
    struct flight_key own;

    if ((flight == NULL || flight->settled == NULL) &&
        key->kind == FLIGHT_ORG && jr->has_cred) {
        own = *key;
        own.kind = FLIGHT_CREDENTIAL;
        memcpy(own.id, jr->cred, JG_CRED_HASH_LEN);
        flight = *flight_slot(sh, &own);
    }
    if (flight == NULL || flight->settled == NULL)
        return NULL;
    __atomic_add_fetch(&flight->settled->refs, 1, __ATOMIC_ACQ_REL);
    return flight->settled;
}

/* Answer jr from a kept answer if it may see it; drops the reference. */
static bool
take_kept(struct job_request *jr, struct shared_outcome *so)
{
    bool taken = may_take_kept(jr, &so->oc);

    if (taken) {
        JG_COUNT(jr->srv->metrics.coalesced);
        jr->collapsed = true;
        set_state(jr, JOB_WAITING);
        /* may_take_kept() is stricter than may_share(), so no refetch. */
        reply_upstream(jr, &so->oc);
    }
    release_outcome(so);
    return taken;
}

/* For only-if-cached: answer from a kept answer, as from the cache. */
static bool
answer_kept(struct job_request *jr)
{
    struct jg_shared *sh = jr->srv->shared;
    struct flight_key key;
    struct shared_outcome *so;

    if (!flight_key_for(jr, &key))
        return false;
    pthread_mutex_lock(&sh->flights_lock);
    so = find_kept(sh, jr, &key);
    pthread_mutex_unlock(&sh->flights_lock);
    return so != NULL && take_kept(jr, so);
}

/*
 * Join a flight for the same job and scope, or start one. The lookup and
 * the insertion of a new flight happen under one hold of the lock, so two
 * workers missing the same job at once still send one request.
 */
static void
miss(struct job_request *jr)
{
    struct jg_server *srv = jr->srv;
    struct jg_shared *sh = srv->shared;
    struct flight_key key;
    struct jg_flight **slot;
    struct jg_flight *flight;
    struct shared_outcome *kept;
    int retries = 0;

    JG_COUNT(srv->metrics.cache_misses);
    if (!flight_key_for(jr, &key)) {
        flight_start(jr);
        return;
    }

again:
    pthread_mutex_lock(&sh->flights_lock);
    slot = flight_slot(sh, &key);
    flight = *slot;

    /* An answer kept for the cache is as good as an entry, on the same
     * terms. A no-cache request needs an answer fetched after it came. */
    kept = jr->refresh ? NULL : find_kept(sh, jr, &key);
    if (kept != NULL || (flight != NULL && flight->settled != NULL)) {
        pthread_mutex_unlock(&sh->flights_lock);
        if (kept != NULL && take_kept(jr, kept))
            return;
        flight_start(jr);
        return;
    }

    if (flight == NULL && jr->has_cred && !jr->refresh && retries < 2 &&
        sh->settle_gen != jr->settle_gen) {
        /*
         * A flight settled since this request searched the cache: its
         * entry may have been committed after that search, and its flight
         * removed before this one. Search again rather than fetch again.
         */
        jr->settle_gen = sh->settle_gen;
        pthread_mutex_unlock(&sh->flights_lock);
        retries++;
        if (lookup(jr))
            return;
        goto again;
    }
    if (flight == NULL) {
        flight = flight_new(jr);
        flight->key = key;
        flight->next = NULL;
        *slot = flight;
        flight->in_table = true;
        sh->flight_count++;
        pthread_mutex_unlock(&sh->flights_lock);
        flight_fetch(flight, jr);
        return;
    }
    if (flight->waiter_count >= srv->cfg.max_waiters) {
        pthread_mutex_unlock(&sh->flights_lock);
        JG_COUNT(srv->metrics.coalesce_full);
        flight_start(jr);
        return;
    }
    jr->collapsed = true;
    flight_add_waiter(flight, jr);
    set_state(jr, JOB_WAITING);
    pthread_mutex_unlock(&sh->flights_lock);
    JG_COUNT(srv->metrics.coalesced);
}

/* ---- answers after a fetch ----------------------------------------- */

/* Every Cache-Control field line counts, not only the first. */
static bool
no_store_requested(const struct evkeyvalq *headers)
{
    const struct evkeyval *h;

    TAILQ_FOREACH(h, headers, next) {
        if (strcasecmp(h->key, "Cache-Control") == 0 &&
            (jg_http_list_has_token(h->value, "no-store") ||
             jg_http_list_has_token(h->value, "private")))
            return true;
    }
    return false;
}

/* Inspect a 200 answer, teach the principal table, queue the cache write. */
static void
judge_response(struct jg_flight *flight, struct outcome *oc)
{
    struct jg_server *srv = flight->srv;
    struct jg_inspect_result res;
    enum jg_inspect_verdict verdict;
    const char *ctype;

    verdict = jg_inspect_body(oc->body, oc->body_len, flight->job,
                              &srv->cfg.terminal_statuses,
                              srv->cfg.max_body_bytes, &res);
    oc->org_valid = res.org_valid;
    memcpy(oc->org, res.org, JG_UUID_LEN);
    /*
     * A 401 that arrived while this fetch was in flight may have revoked
     * the credential after the upstream answered it: such a 200 proves
     * nothing, and the next request proves the credential again.
     */
    if (res.org_valid && flight->leader_has_cred &&
        flight->forget_epoch ==
            __atomic_load_n(&srv->shared->forget_epoch, __ATOMIC_ACQUIRE))
        jg_principals_learn(srv->principals, flight->leader_cred, res.org,
                            jg_now_ms());

    ctype = evhttp_find_header(oc->headers, "Content-Type");
    if (verdict != JG_INSPECT_CACHEABLE) {
        oc->detail = jg_inspect_verdict_name(verdict);
    } else if (no_store_requested(oc->headers)) {
        oc->detail = "no-store";
    } else if (ctype == NULL || strlen(ctype) > 255) {
        oc->detail = "bad-content-type";
    } else {
        struct jg_entry entry = {
            .stored_at = jg_wall_s(),
            .http_status = 200,
            .content_type = ctype,
            .content_type_len = strlen(ctype),
            .body = oc->body,
            .body_len = oc->body_len,
        };

        memcpy(entry.owner, flight->leader_owner, JG_ENTRY_OWNER_LEN);
        jg_cache_put(srv->cache, res.org, flight->job, &entry);
        jg_server_schedule_flush(srv);
        oc->stored = true;
        JG_COUNT(srv->metrics.stored);
        return;
    }
    JG_COUNT(srv->metrics.not_stored);
    jg_log_debug("job %.*s not stored: %s", flight->waiters->path_len,
                 flight->waiters->target, oc->detail);
}

/* May this waiter see the answer its flight's leader received? */
static bool
may_share(const struct job_request *jr, const struct outcome *oc)
{
    bool same_cred = jr->has_cred == oc->leader_has_cred &&
                     (!jr->has_cred ||
                      memcmp(jr->cred, oc->leader_cred,
                             JG_CRED_HASH_LEN) == 0);

    if (same_cred || oc->error != JG_FETCH_OK)
        return true;
    if (oc->status == 401 || oc->status == 403)
        return false;
    if (oc->status == 200 && oc->org_valid)
        return jr->has_cred &&
               jg_principals_allows(jr->srv->principals, jr->cred, oc->org,
                                    jg_now_ms());
    return true;
}

static void
reply_upstream_error(struct job_request *jr, const struct outcome *oc)
{
    enum jg_fetch_error err = oc->error;
    char cache_status[128];

    snprintf(cache_status, sizeof(cache_status),
             "jobgate; fwd=%s; detail=upstream-%s%s",
             jr->refresh ? "request" : (jr->stale ? "stale" : "miss"),
             jg_fetch_error_name(err), jr->collapsed ? "; collapsed" : "");
    jg_http_add_header(jr->req, "Cache-Status", cache_status);
    job_request_log(jr, oc->status, "error", (long)oc->elapsed_ms);
    jg_reply_detail(jr->srv, jr->req, oc->status,
                    err == JG_FETCH_TIMEOUT     ? "upstream timed out"
                    : err == JG_FETCH_TOO_LARGE ? "upstream response too large"
                    : err == JG_FETCH_CANCELLED ? "shutting down"
                                                : "upstream request failed");
    job_request_done(jr);
}

static void
reply_upstream(struct job_request *jr, const struct outcome *oc)
{
    char cache_status[160];

    set_state(jr, JOB_REPLYING);
    if (oc->error != JG_FETCH_OK) {
        reply_upstream_error(jr, oc);
        return;
    }

    jg_copy_response_headers(oc->headers, jr->req);
    snprintf(cache_status, sizeof(cache_status),
             "jobgate; fwd=%s; fwd-status=%d%s%s%s",
             jr->refresh ? "request" : (jr->stale ? "stale" : "miss"),
             oc->status, oc->stored ? "; stored" : "",
             oc->detail != NULL ? "; detail=" : "",
             oc->detail != NULL ? oc->detail : "");
    if (jr->collapsed)
        strncat(cache_status, "; collapsed",
                sizeof(cache_status) - strlen(cache_status) - 1);
    jg_http_add_header(jr->req, "Cache-Status", cache_status);
    job_request_log(jr, oc->status, oc->stored ? "stored" : "miss",
                    (long)oc->elapsed_ms);
    jg_server_reply(jr->srv, jr->req, oc->status, oc->body, oc->body_len);
    job_request_done(jr);
}

/* Answer a waiter with its flight's outcome, or fetch again for it. */
static void
deliver(struct job_request *jr, const struct outcome *oc)
{
    jr->flight = NULL;
    if (may_share(jr, oc)) {
        reply_upstream(jr, oc);
        return;
    }
    JG_COUNT(jr->srv->metrics.refetched);
    flight_start(jr);
}

static struct shared_outcome *
share_outcome(const struct outcome *oc)
{
    struct shared_outcome *so = jg_calloc(1, sizeof(*so));
    const struct evkeyval *h;

    so->oc = *oc;
    TAILQ_INIT(&so->headers);
    if (oc->headers != NULL) {
        TAILQ_FOREACH(h, oc->headers, next)
            evhttp_add_header(&so->headers, h->key, h->value);
    }
    so->oc.headers = &so->headers;
    so->body = jg_malloc(oc->body_len + 1);
    if (oc->body_len > 0)
        memcpy(so->body, oc->body, oc->body_len);
    so->oc.body = so->body;
    return so;
}

static void
release_outcome(struct shared_outcome *so)
{
    if (__atomic_sub_fetch(&so->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    evhttp_clear_headers(&so->headers);
    jg_free(so->body);
    jg_free(so);
}

/* On a waiter's own worker: answer it from a copied outcome. */
static void
deliver_remote(struct jg_server *srv, void *arg)
{
    struct job_request *jr = arg;
    struct shared_outcome *so = jr->remote_outcome;

    (void)srv;
    jr->remote_outcome = NULL;
    deliver(jr, &so->oc);
    release_outcome(so);
}

void
jg_request_drop_kept(struct jg_server *srv, const uint8_t id[JG_UUID_LEN],
                     bool by_org)
{
    struct jg_shared *sh = srv->shared;
    size_t b;

    pthread_mutex_lock(&sh->flights_lock);
    for (b = 0; b < sh->flight_buckets; b++) {
        struct jg_flight *flight = sh->flights[b];

        while (flight != NULL) {
            struct jg_flight *next = flight->next;
            const struct outcome *oc =
                flight->settled != NULL ? &flight->settled->oc : NULL;

            /* Its worker frees it when the batch is committed. */
            if (oc != NULL &&
                (by_org ? oc->org_valid &&
                              memcmp(oc->org, id, JG_UUID_LEN) == 0
                        : memcmp(flight->job, id, JG_UUID_LEN) == 0))
                flight_unlink(flight);
            flight = next;
        }
    }
    pthread_mutex_unlock(&sh->flights_lock);
}

void
jg_request_settle(struct jg_server *srv)
{
    struct jg_shared *sh = srv->shared;
    struct jg_flight *flight = srv->settled;
    struct jg_flight *next;

    srv->settled = NULL;
    if (flight == NULL)
        return;
    pthread_mutex_lock(&sh->flights_lock);
    for (next = flight; next != NULL; next = next->next_settled)
        flight_unlink(next);
    __atomic_store_n(&sh->settle_gen, sh->settle_gen + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&sh->flights_lock);
    for (; flight != NULL; flight = next) {
        next = flight->next_settled;
        release_outcome(flight->settled);
        jg_free(flight);
    }
}

static void
flight_done(const struct jg_upstream_response *resp, void *arg)
{
    struct jg_flight *flight = arg;
    struct jg_server *srv = flight->srv;
    struct jg_shared *sh = srv->shared;
    struct outcome oc = {
        .error = resp->error,
        .elapsed_ms = resp->elapsed_ms,
        .headers = resp->headers,
        .leader_has_cred = flight->leader_has_cred,
    };
    struct shared_outcome *so = NULL;
    struct job_request *waiters;
    struct job_request *jr;
    struct job_request *next;
    size_t remote = 0;
    bool keep;

    memcpy(oc.leader_cred, flight->leader_cred, JG_CRED_HASH_LEN);
    memcpy(oc.owner, flight->leader_owner, JG_ENTRY_OWNER_LEN);

    if (resp->error != JG_FETCH_OK) {
        oc.status = resp->error == JG_FETCH_TIMEOUT     ? 504
                    : resp->error == JG_FETCH_CANCELLED ? 503
                                                        : 502;
        if (resp->error == JG_FETCH_TIMEOUT)
            JG_COUNT(srv->metrics.upstream_timeouts);
        else
            JG_COUNT(srv->metrics.upstream_errors);
        jg_log_warn("upstream GET %.*s failed after %" PRIu64 " ms: %s (%s)",
                    flight->waiters->path_len, flight->waiters->target,
                    resp->elapsed_ms,
                    jg_fetch_error_name(resp->error), resp->error_text);
    } else {
        oc.status = (int)resp->status;
        oc.body_len = evbuffer_get_length(resp->body);
        oc.body = (const char *)evbuffer_pullup(resp->body, -1);
        if (oc.body == NULL)
            oc.body = "";
        if (oc.status == 200)
            judge_response(flight, &oc);
        else
            oc.detail = "status";
        if (oc.status == 401 && flight->leader_has_cred) {
            jg_principals_forget(srv->principals, flight->leader_cred);
            __atomic_add_fetch(&sh->forget_epoch, 1, __ATOMIC_ACQ_REL);
        }
    }

    /*
     * A stored answer reaches the cache only when this worker commits its
     * batch at the end of the loop turn. Until then the flight stays in the
     * table with a copy of the outcome, so that a miss in between, on any
     * worker or pipelined behind the leader, takes this answer instead of
     * fetching again. Any other answer ends the flight now.
     */
    keep = oc.stored && flight->in_table;
    if (keep) {
        so = share_outcome(&oc);
        so->refs = 1;
    }
    pthread_mutex_lock(&sh->flights_lock);
    waiters = flight->waiters;
    flight->waiters = NULL;
    if (keep)
        flight->settled = so;
    else
        flight_unlink(flight);
    pthread_mutex_unlock(&sh->flights_lock);

    /* Waiters on other workers are answered on their own threads, from a
     * copy that the last user frees. */
    for (jr = waiters; jr != NULL; jr = jr->next_waiter)
        remote += jr->srv != srv;
    if (remote > 0 && so == NULL) {
        so = share_outcome(&oc);
        so->refs = 0;
    }
    if (remote > 0)
        __atomic_add_fetch(&so->refs, remote, __ATOMIC_ACQ_REL);

    for (jr = waiters; jr != NULL; jr = next) {
        next = jr->next_waiter;
        if (jr->srv == srv) {
            deliver(jr, &oc);
            continue;
        }
        jr->remote_outcome = so;
        jg_server_post(jr->srv, deliver_remote, jr);
    }

    if (keep) {
        flight->next_settled = srv->settled;
        srv->settled = flight;
        return;
    }
    jg_free(flight);
}

/* A new flight led by jr, not yet in the table nor sent. */
static struct jg_flight *
flight_new(struct job_request *jr)
{
    struct jg_server *srv = jr->srv;
    struct jg_flight *flight = jg_calloc(1, sizeof(*flight));

    flight->srv = srv;
    flight->tail = &flight->waiters;
    memcpy(flight->job, jr->job, JG_UUID_LEN);
    flight->leader_has_cred = jr->has_cred;
    memcpy(flight->leader_cred, jr->cred, JG_CRED_HASH_LEN);
    memcpy(flight->leader_owner, jr->owner, JG_ENTRY_OWNER_LEN);
    flight->forget_epoch =
        __atomic_load_n(&srv->shared->forget_epoch, __ATOMIC_ACQUIRE);
    flight_add_waiter(flight, jr);
    set_state(jr, JOB_FETCHING);
    return flight;
}

/* Send the upstream request of a flight led by jr. */
static void
flight_fetch(struct jg_flight *flight, struct job_request *jr)
{
    struct jg_server *srv = jr->srv;
    struct curl_slist *headers;

    headers = jg_forward_headers(jr->req, 1, jr->cred_header);
    JG_COUNT(srv->metrics.upstream_requests);
    jg_upstream_fetch(srv->upstream, "GET", jr->target, headers, NULL, 0,
                      flight_done, flight);
}

/* Start a fetch of jr's own, which no other request joins. */
static void
flight_start(struct job_request *jr)
{
    flight_fetch(flight_new(jr), jr);
}

/* ---- entry point ---------------------------------------------------- */

/*
 * Append s[0..len) as the inside of a JSON string. Bytes outside ASCII are
 * written as \u00XX so that the answer stays valid JSON whatever the
 * client sent.
 */
static void
add_json_string(struct evbuffer *out, const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '"' || c == '\\')
            evbuffer_add_printf(out, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            evbuffer_add_printf(out, "\\u%04x", c);
        else
            evbuffer_add(out, &s[i], 1);
    }
}

static void
reply_validation_error(struct jg_server *srv, struct jg_http_request *req,
                       enum jg_uuid_status st, const char *segment,
                       size_t len, const char *path, uint64_t started_ms)
{
    struct evbuffer *body = evbuffer_new();
    char *raw = jg_strndup(segment, len);
    size_t decoded_len = 0;
    char *decoded = evhttp_uridecode(raw, 0, &decoded_len);

    /* The upstream echoes the decoded segment; pydantic's wording of msg
     * changes between versions, while type and loc are stable. */
    if (st == JG_UUID_NOT_V4)
        evbuffer_add_printf(body, "{\"detail\":[{\"type\":\"uuid_version\","
                            "\"loc\":[\"path\",\"job_id\"],\"msg\":"
                            "\"UUID version 4 expected\",\"input\":\"");
    else
        evbuffer_add_printf(body, "{\"detail\":[{\"type\":\"uuid_parsing\","
                            "\"loc\":[\"path\",\"job_id\"],\"msg\":"
                            "\"Input should be a valid UUID\",\"input\":\"");
    add_json_string(body, decoded != NULL ? decoded : raw,
                    decoded != NULL ? decoded_len : len);
    if (st == JG_UUID_NOT_V4)
        evbuffer_add_printf(body, "\",\"ctx\":{\"expected_version\":4}}]}");
    else
        evbuffer_add_printf(body, "\"}]}");
    free(decoded);
    jg_free(raw);

    jg_http_add_header(req, "Content-Type", "application/json");
    JG_COUNT(srv->metrics.requests_invalid);
    jg_access_log("invalid", "GET", 422, "none", -1,
                  jg_now_ms() - started_ms, NULL, path);
    jg_server_reply(srv, req, 422, evbuffer_pullup(body, -1),
                    evbuffer_get_length(body));
    evbuffer_free(body);
    jg_server_request_done(srv);
}

static void
read_cache_control(struct job_request *jr)
{
    const char *cc = jg_http_find(jr->req, "Cache-Control");
    const char *pragma = jg_http_find(jr->req, "Pragma");

    if (cc != NULL) {
        jr->refresh = jg_http_list_has_token(cc, "no-cache") ||
                      jg_http_list_has_token(cc, "max-age=0");
        jr->only_if_cached = jg_http_list_has_token(cc, "only-if-cached");
    } else if (pragma != NULL) {
        jr->refresh = jg_http_list_has_token(pragma, "no-cache");
    }
}

/*
 * The owner tag stored with an entry under share_scope = credential: an
 * HMAC-SHA-256 of the credential under the cache's own key, so that it
 * stays the same across restarts and reveals nothing of the credential.
 */
static void
owner_tag(const struct jg_server *srv, const char *token, size_t len,
          uint8_t out[JG_ENTRY_OWNER_LEN])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;

    HMAC(EVP_sha256(), srv->owner_key, sizeof(srv->owner_key),
         (const unsigned char *)token, len, digest, &digest_len);
    memcpy(out, digest, JG_ENTRY_OWNER_LEN);
}

static void
read_credential(struct job_request *jr)
{
    static const char *const header_names[] = {
        [JG_CRED_GALILEO_KEY] = "Galileo-API-Key",
        [JG_CRED_SPLUNK_KEY] = "Splunk-AO-API-Key",
        [JG_CRED_BEARER] = "Authorization",
    };
    enum jg_cred_source source;
    const char *token;
    size_t len;

    source = jg_credential_extract(
        jg_http_find_end_to_end(jr->req, "Galileo-API-Key"),
        jg_http_find_end_to_end(jr->req, "Splunk-AO-API-Key"),
        jg_http_find_end_to_end(jr->req, "Authorization"), &token, &len);
    if (source == JG_CRED_NONE) {
        return;
    }
    jr->has_cred = true;
    jr->cred_header = header_names[source];
    jg_principals_hash(jr->srv->principals, source, token, len, jr->cred);
    if (jr->srv->cfg.share_scope == JG_SHARE_CREDENTIAL)
        owner_tag(jr->srv, token, len, jr->owner);
}

/* Serve a cached-route GET whose id segment is segment[0..len). */
static void
job_route(struct jg_server *srv, struct jg_http_request *req,
          const char *route, const char *segment, size_t len,
          const char *target, uint64_t started_ms)
{
    struct job_request on_stack = {0};
    struct job_request *jr = &on_stack;
    uint8_t job[JG_UUID_LEN];
    enum jg_uuid_status st;

    st = jg_uuid_parse_segment(segment, len, job);
    if (st != JG_UUID_OK) {
        reply_validation_error(srv, req, st, segment, len, target,
                               started_ms);
        return;
    }

    JG_COUNT(srv->metrics.requests_job);
    jr->srv = srv;
    jr->req = req;
    jr->route = route;
    jr->target = target;
    jr->path_len = (int)strcspn(target, "?");
    jr->started_ms = started_ms;
    memcpy(jr->job, job, JG_UUID_LEN);
    read_credential(jr);
    read_cache_control(jr);
    set_state(jr, JOB_VALIDATED);

    /* A hit is answered from the stack; only a miss needs to outlive this
     * call. */
    if (jr->has_cred && !jr->refresh) {
        jr->settle_gen =
            __atomic_load_n(&srv->shared->settle_gen, __ATOMIC_ACQUIRE);
        if (lookup(jr))
            return;
    }
    jr = jg_malloc(sizeof(*jr));
    *jr = on_stack;
    jr->on_heap = true;
    set_state(jr, JOB_LOOKED_UP);

    if (jr->only_if_cached && jr->has_cred && answer_kept(jr))
        return;
    if (jr->only_if_cached) {
        JG_COUNT(srv->metrics.only_if_cached_misses);
        jg_http_add_header(req, "Cache-Status",
                           "jobgate; fwd=miss; detail=only-if-cached");
        job_request_log(jr, 504, "miss", -1);
        jg_reply_detail(srv, req, 504, "not cached");
        job_request_done(jr);
        return;
    }
    miss(jr);
}

/*
 * Reject a credential header given twice, which could make jobgate and the
 * upstream check different values. The HTTP server has already rejected
 * invalid fields and ambiguous framing.
 */
static const char *
header_problem(const struct jg_http_request *req)
{
    const struct jg_http_field *fields = jg_http_fields(req);
    size_t count = jg_http_field_count(req);
    int credentials[3] = {0, 0, 0};
    size_t i;

    for (i = 0; i < count; i++) {
        size_t n = fields[i].name_len;

        if (n == 15 && strcasecmp(fields[i].name, "Galileo-API-Key") == 0)
            credentials[0]++;
        else if (n == 17 &&
                 strcasecmp(fields[i].name, "Splunk-AO-API-Key") == 0)
            credentials[1]++;
        else if (n == 13 && strcasecmp(fields[i].name, "Authorization") == 0)
            credentials[2]++;
    }
    if (credentials[0] > 1 || credentials[1] > 1 || credentials[2] > 1)
        return "a credential header given more than once";
    return NULL;
}

static void
reply_bad_request(struct jg_server *srv, struct jg_http_request *req,
                  const char *message, const char *target, uint64_t started)
{
    /* The connection cannot be trusted to frame another request. */
    jg_http_set_close(req);
    JG_COUNT(srv->metrics.requests_invalid);
    jg_access_log("invalid", "-", 400, "none", -1, jg_now_ms() - started,
                  NULL, target);
    jg_reply_detail(srv, req, 400, message);
    jg_server_request_done(srv);
}

void
jg_request_handle(struct jg_http_request *req, void *arg)
{
    struct jg_server *srv = arg;
    const char *target = jg_http_target(req);
    uint64_t started = jg_now_ms();
    const char *problem;
    const char *route;
    const char *segment;
    size_t body_len;
    size_t len;

    JG_COUNT(srv->metrics.requests);
    srv->active_requests++;

    problem = header_problem(req);
    if (problem != NULL) {
        reply_bad_request(srv, req, problem, "-", started);
        return;
    }
    /* Only origin-form targets, because an absolute-form one names a host,
     * and the upstream comes from the configuration alone. */
    if (target[0] != '/') {
        reply_bad_request(srv, req, "request target must be a path", "-",
                          started);
        return;
    }

    route = jg_route_match(target, &segment, &len);
    if (route == NULL || jg_http_method(req) != JG_HTTP_GET) {
        JG_COUNT(srv->metrics.requests_passthrough);
        jg_passthrough_start(srv, req, target, started);
        return;
    }
    jg_http_body(req, &body_len);
    if (body_len > 0 || jg_http_find(req, "Transfer-Encoding") != NULL) {
        reply_bad_request(srv, req, "a GET of a job carries no body", target,
                          started);
        return;
    }
    job_route(srv, req, route, segment, len, target, started);
}
