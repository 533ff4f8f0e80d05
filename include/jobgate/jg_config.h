/*
 * Configuration: one table of keys with their type, bounds and default.
 *
 * Values come from the built-in defaults, then a "key = value" file, then
 * JOBGATE_<KEY> environment variables, then --key=value flags, each layer
 * overriding the one before. Parsing, the environment, the flags, the dump
 * of the effective configuration and the documented sample file all follow
 * the same table, so they cannot disagree.
 */
#ifndef JOBGATE_JG_CONFIG_H
#define JOBGATE_JG_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "jobgate/jg_inspect.h"
#include "jobgate/jg_log.h"

#define JG_CONFIG_STR_MAX 1024
/* Room for the origins of every key of the table. */
#define JG_CONFIG_MAX_KEYS 40

enum jg_share_scope {
    /* Callers proven for the same organization share entries. */
    JG_SHARE_ORG = 0,
    /* A caller is served only entries its own credential fetched. */
    JG_SHARE_CREDENTIAL,
};

struct jg_config {
    char listen[JG_CONFIG_STR_MAX];       /* host:port or unix:/path */
    char admin_listen[JG_CONFIG_STR_MAX]; /* same forms; empty: disabled */
    char upstream[JG_CONFIG_STR_MAX];     /* base URL, no trailing slash */
    char cache_dir[JG_CONFIG_STR_MAX];
    struct jg_status_set terminal_statuses;
    uint64_t terminal_ttl_s;       /* 0: kept until evicted */
    uint64_t cache_max_bytes;
    uint64_t auth_ttl_s;
    enum jg_share_scope share_scope;
    uint64_t workers;               /* event loop threads */
    uint64_t upstream_timeout_ms;         /* whole upstream exchange */
    uint64_t upstream_connect_timeout_ms;
    uint64_t upstream_max_connections;
    uint64_t max_body_bytes;        /* largest job body that is cached */
    uint64_t max_passthrough_bytes; /* largest upstream body relayed */
    uint64_t max_request_body_bytes;
    uint64_t client_header_timeout_ms;
    uint64_t client_timeout_ms;     /* idle keep-alive connection timeout */
    uint64_t max_header_bytes;
    uint64_t max_headers;
    uint64_t max_uri_bytes;
    uint64_t max_connections;
    uint64_t max_principals;
    uint64_t max_waiters;           /* callers waiting on one upstream fetch */
    uint64_t drain_timeout_ms;
    enum jg_log_level log_level;

    /* Where each key's value came from ("built-in default", "path:line",
     * "environment JOBGATE_X", "flag --x"), in table order, for errors
     * that involve two keys. */
    char origins[JG_CONFIG_MAX_KEYS][256];
};

/* Fill cfg with the built-in defaults, the values of config/jobgate.conf. */
void jg_config_defaults(struct jg_config *cfg);

/*
 * Set one key from text. origin names where the value came from
 * ("jobgate.conf:12", "environment JOBGATE_LISTEN", "flag --listen") and
 * starts the error message. Returns 0, or -1 with a message in err naming
 * the origin, the key, the value and what was expected; cfg is then
 * unchanged.
 */
int jg_config_set(struct jg_config *cfg, const char *key, const char *value,
                  const char *origin, char *err, size_t errlen);

/*
 * Read a config file into cfg: "key = value" lines, blank lines and '#'
 * comments. A value may be wrapped in double quotes, and an unquoted value
 * ends at a '#' that follows a space or tab. A key set twice in one file is
 * an error. Returns 0, or -1 at the first error, whose message starts with
 * "path:line"; keys set before that line keep their new values.
 */
int jg_config_load_file(struct jg_config *cfg, const char *path, char *err,
                        size_t errlen);

/*
 * Apply every JOBGATE_<KEY> variable of envp (NULL-terminated, as environ).
 * A JOBGATE_ variable that names no key is an error, so typos are caught.
 */
int jg_config_load_env(struct jg_config *cfg, char *const *envp, char *err,
                       size_t errlen);

/*
 * Check values that depend on each other: listen and admin_listen differ,
 * the upstream URL is http or https, the connect timeout is within the
 * upstream timeout, max_body_bytes is within max_passthrough_bytes and
 * cache_max_bytes, and both connection limits leave each worker one.
 * Returns 0, or -1 with a message.
 */
int jg_config_check(const struct jg_config *cfg, char *err, size_t errlen);

/* Write the effective configuration as a config file that loads back to
 * the same values. */
void jg_config_dump(const struct jg_config *cfg, FILE *out);

/* Write every key with its default, meaning and valid values, for --help. */
void jg_config_usage(FILE *out);

#endif
