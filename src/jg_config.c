/*
 * The configuration table and everything driven by it: the built-in
 * defaults, the config file reader, the JOBGATE_<KEY> environment
 * overrides, the cross-field check, the effective-config dump and the usage
 * text.
 *
 * Each key is one row of config_keys[]: name, value type, bounds, default
 * text, the offset of its field in struct jg_config and help text. Every
 * path that reads or writes a value goes through that row, so a new key
 * needs one row and one field, and the file, the environment, the dump and
 * the defaults cannot disagree about it. Values are parsed strictly (no
 * signs, no spaces inside numbers, no silent clamping), and every error
 * names where the value came from, the key, the value and what was
 * expected.
 */
#include "jobgate/jg_config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "jobgate/jg_util.h"

/* Maximum length of a config file line in bytes, comments included. */
#define LINE_MAX_BYTES 4096
/* Maximum number of value bytes quoted in an error message. */
#define QUOTE_MAX_BYTES 120
/* Maximum length of a host name (RFC 1035). */
#define HOST_MAX_BYTES 253
#define KIB ((uint64_t)1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)
#define TIB (GIB * 1024)

enum key_type {
    KEY_PATH,         /* non-empty file system path */
    KEY_LISTEN,       /* host:port, [IPv6]:port or unix:/absolute/path */
    KEY_URL,          /* http:// or https:// base URL */
    KEY_UINT,         /* plain count, unit in key_def.unit */
    KEY_SECONDS,      /* duration stored in seconds */
    KEY_MILLISECONDS, /* duration stored in milliseconds */
    KEY_BYTES,        /* size stored in bytes */
    KEY_ENUM,         /* one of key_def.choices, stored as an int enum */
    KEY_STATUSES,     /* comma-separated struct jg_status_set */
    KEY_LOG_LEVEL,    /* enum jg_log_level by jg_log_level_parse() */
};

/* An empty value is valid for the key and disables what it configures. */
#define KEY_EMPTY_OK 0x1u

struct unit_suffix {
    const char *suffix; /* matched case-insensitively */
    uint64_t factor;    /* multiplier to the stored unit */
};

struct key_def {
    const char *name;
    enum key_type type;
    const char *default_value;
    size_t offset;              /* of the field in struct jg_config */
    uint64_t min;               /* numeric types, in the stored unit */
    uint64_t max;
    const char *unit;           /* KEY_UINT: what is counted */
    const char *const *choices; /* KEY_ENUM: names in enum order, NULL-ended */
    unsigned flags;
    const char *help;
};

static const struct unit_suffix count_suffixes[] = {{"", 1}, {NULL, 0}};
static const struct unit_suffix second_suffixes[] = {
    {"", 1}, {"s", 1}, {"m", 60}, {"h", 3600}, {"d", 86400}, {NULL, 0}};
static const struct unit_suffix millisecond_suffixes[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {NULL, 0}};
static const struct unit_suffix byte_suffixes[] = {
    {"", 1}, {"k", KIB}, {"m", MIB}, {"g", GIB}, {NULL, 0}};

static const char *const share_scope_names[] = {"org", "credential", NULL};

/* Enum fields are read and written as int through memcpy. */
_Static_assert(sizeof(enum jg_share_scope) == sizeof(int),
               "enum jg_share_scope must be int-sized");
_Static_assert(sizeof(enum jg_log_level) == sizeof(int),
               "enum jg_log_level must be int-sized");

#define FIELD(f) offsetof(struct jg_config, f)

/*
 * The keys, in the order of the dump. Bounds reject values that cannot
 * work, such as a zero timeout, and typos that are orders of magnitude
 * off. They are not tuned to any machine.
 */
static const struct key_def config_keys[] = {
    {.name = "listen", .type = KEY_LISTEN,
     .default_value = "127.0.0.1:8080", .offset = FIELD(listen),
     .help = "address of the proxy listener: host:port, [IPv6]:port or "
             "unix:/absolute/path"},
    {.name = "admin_listen", .type = KEY_LISTEN,
     .default_value = "127.0.0.1:8081", .offset = FIELD(admin_listen),
     .flags = KEY_EMPTY_OK,
     .help = "address of the admin listener (health, metrics, purge), in "
             "the same forms; empty disables it"},
    {.name = "upstream", .type = KEY_URL,
     .default_value = "https://api.galileo.ai", .offset = FIELD(upstream),
     .help = "base URL of the Galileo API, http:// or https://; a trailing "
             "slash is removed"},
    {.name = "cache_dir", .type = KEY_PATH, .default_value = "cache",
     .offset = FIELD(cache_dir),
     .help = "directory of the LMDB cache; a relative path is resolved "
             "against the working directory"},
    {.name = "terminal_statuses", .type = KEY_STATUSES,
     .default_value = "completed,failed,error,cancelled",
     .offset = FIELD(terminal_statuses),
     .help = "comma-separated job statuses that never change again; only "
             "jobs in one of them are cached"},
    {.name = "terminal_ttl", .type = KEY_SECONDS, .default_value = "86400",
     .offset = FIELD(terminal_ttl_s), .min = 0, .max = 3650 * 86400ULL,
     .help = "seconds a cached job is served; 0 keeps it until evicted"},
    {.name = "cache_max_bytes", .type = KEY_BYTES,
     .default_value = "1073741824", .offset = FIELD(cache_max_bytes),
     .min = MIB, .max = 16 * TIB,
     .help = "maximum size of the cache in bytes; the oldest entries are "
             "evicted above it"},
    {.name = "auth_ttl", .type = KEY_SECONDS, .default_value = "60",
     .offset = FIELD(auth_ttl_s), .min = 1, .max = 86400,
     .help = "seconds an upstream 200 proves that a credential may read its "
             "organization's cached jobs"},
    {.name = "share_scope", .type = KEY_ENUM, .default_value = "org",
     .offset = FIELD(share_scope), .choices = share_scope_names,
     .help = "org: callers proven for one organization share its entries; "
             "credential: each credential sees only what it fetched"},
    {.name = "workers", .type = KEY_UINT, .default_value = "1",
     .offset = FIELD(workers), .min = 1, .max = 64, .unit = "threads",
     .help = "event loops serving the proxy port, one thread each, all "
             "accepting on one listening socket"},
    {.name = "upstream_timeout_ms", .type = KEY_MILLISECONDS,
     .default_value = "10000", .offset = FIELD(upstream_timeout_ms),
     .min = 1, .max = 3600000,
     .help = "milliseconds allowed for a whole upstream exchange"},
    {.name = "upstream_connect_timeout_ms", .type = KEY_MILLISECONDS,
     .default_value = "2000", .offset = FIELD(upstream_connect_timeout_ms),
     .min = 1, .max = 3600000,
     .help = "milliseconds allowed to connect to the upstream, TLS "
             "handshake included"},
    {.name = "upstream_max_connections", .type = KEY_UINT,
     .default_value = "64", .offset = FIELD(upstream_max_connections),
     .min = 1, .max = 4096, .unit = "connections",
     .help = "maximum number of connections to the upstream"},
    {.name = "max_body_bytes", .type = KEY_BYTES, .default_value = "65536",
     .offset = FIELD(max_body_bytes), .min = 1, .max = 64 * MIB,
     .help = "largest job body in bytes that is cached; larger ones are "
             "relayed but not stored"},
    {.name = "max_passthrough_bytes", .type = KEY_BYTES,
     .default_value = "16777216", .offset = FIELD(max_passthrough_bytes),
     .min = 1, .max = GIB,
     .help = "largest upstream response body in bytes relayed on any route"},
    {.name = "max_request_body_bytes", .type = KEY_BYTES,
     .default_value = "1048576", .offset = FIELD(max_request_body_bytes),
     .min = 0, .max = GIB,
     .help = "largest client request body in bytes accepted for "
             "passthrough routes"},
    {.name = "client_header_timeout_ms", .type = KEY_MILLISECONDS,
     .default_value = "10000", .offset = FIELD(client_header_timeout_ms),
     .min = 1, .max = 3600000,
     .help = "milliseconds a client has to send its first whole request, "
             "head and body, from connecting"},
    {.name = "client_timeout_ms", .type = KEY_MILLISECONDS,
     .default_value = "60000", .offset = FIELD(client_timeout_ms),
     .min = 1, .max = 86400000,
     .help = "milliseconds an idle keep-alive client connection is kept, "
             "and has to send its next whole request"},
    {.name = "max_header_bytes", .type = KEY_BYTES, .default_value = "16384",
     .offset = FIELD(max_header_bytes), .min = 1024, .max = MIB,
     .help = "largest request header section in bytes"},
    {.name = "max_headers", .type = KEY_UINT, .default_value = "100",
     .offset = FIELD(max_headers), .min = 1, .max = 10000,
     .unit = "header fields",
     .help = "maximum number of request header fields"},
    {.name = "max_uri_bytes", .type = KEY_BYTES, .default_value = "8192",
     .offset = FIELD(max_uri_bytes), .min = 64, .max = MIB,
     .help = "maximum request URI length in bytes"},
    {.name = "max_connections", .type = KEY_UINT, .default_value = "10000",
     .offset = FIELD(max_connections), .min = 1, .max = 1000000,
     .unit = "connections",
     .help = "maximum number of open client connections"},
    {.name = "max_principals", .type = KEY_UINT, .default_value = "100000",
     .offset = FIELD(max_principals), .min = 1, .max = 10000000,
     .unit = "credentials",
     .help = "maximum number of credentials remembered with their proven "
             "organizations; the least recently proven is dropped above it"},
    {.name = "max_waiters", .type = KEY_UINT, .default_value = "1000",
     .offset = FIELD(max_waiters), .min = 1, .max = 1000000,
     .unit = "requests",
     .help = "maximum number of client requests waiting on one shared "
             "upstream fetch"},
    {.name = "drain_timeout_ms", .type = KEY_MILLISECONDS,
     .default_value = "10000", .offset = FIELD(drain_timeout_ms),
     .min = 0, .max = 3600000,
     .help = "milliseconds requests in flight may take to finish after "
             "SIGTERM or SIGINT"},
    {.name = "log_level", .type = KEY_LOG_LEVEL, .default_value = "info",
     .offset = FIELD(log_level),
     .help = "least severe level logged: error, warn, info or debug"},
};

_Static_assert(JG_ARRAY_LEN(config_keys) <= JG_CONFIG_MAX_KEYS,
               "struct jg_config has no room for the origin of every key");

static void set_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
set_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/*
 * Copy value into out for an error message: quotes, backslashes and
 * control bytes are escaped so that the message stays one readable line,
 * and long values are cut with "...".
 */
static void
quote_value(const char *value, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    size_t i;

    for (i = 0; value[i] != '\0' && o + 5 < outlen; i++) {
        unsigned char c = (unsigned char)value[i];

        if (i == QUOTE_MAX_BYTES) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 0xf];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

static const struct key_def *
find_key(const char *name)
{
    size_t i;

    for (i = 0; i < JG_ARRAY_LEN(config_keys); i++) {
        if (strcmp(config_keys[i].name, name) == 0)
            return &config_keys[i];
    }
    return NULL;
}

/* The key whose upper-case name is the len bytes at upper, or NULL. */
static const struct key_def *
find_env_key(const char *upper, size_t len)
{
    size_t i;
    size_t j;

    for (i = 0; i < JG_ARRAY_LEN(config_keys); i++) {
        const char *name = config_keys[i].name;

        if (strlen(name) != len)
            continue;
        for (j = 0; j < len; j++) {
            char c = name[j];

            if (c >= 'a' && c <= 'z')
                c = (char)(c - 'a' + 'A');
            if (c != upper[j])
                break;
        }
        if (j == len)
            return &config_keys[i];
    }
    return NULL;
}

static void *
field_of(struct jg_config *cfg, const struct key_def *def)
{
    return (char *)cfg + def->offset;
}

static const void *
const_field_of(const struct jg_config *cfg, const struct key_def *def)
{
    return (const char *)cfg + def->offset;
}

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool
is_alnum(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Bytes that never appear in a path, host or URL value: they could not be
 * written back into the file. */
static bool
has_bad_bytes(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c < 0x20 || c == 0x7f || c == '"')
            return true;
    }
    return false;
}

static void
store_string(void *field, const char *value, size_t len)
{
    memset(field, 0, JG_CONFIG_STR_MAX);
    memcpy(field, value, len);
}

/*
 * Parse decimal digits followed by one of the suffixes. Returns 0, or -1
 * for anything else, including a result above UINT64_MAX.
 */
static int
parse_scaled(const char *text, const struct unit_suffix *suffixes,
             uint64_t *out)
{
    const char *p = text;
    uint64_t v = 0;
    size_t rest;

    if (!is_digit(*p))
        return -1;
    for (; is_digit(*p); p++) {
        uint64_t d = (uint64_t)(*p - '0');

        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }

    rest = strlen(p);
    for (; suffixes->suffix != NULL; suffixes++) {
        if (strlen(suffixes->suffix) != rest ||
            jg_ascii_casecmp_n(p, rest, suffixes->suffix) != 0)
            continue;
        if (v > UINT64_MAX / suffixes->factor)
            return -1;
        *out = v * suffixes->factor;
        return 0;
    }
    return -1;
}

/* A decimal port of 1 to 5 digits. Port 0 makes a listener take any free
 * port, and is meaningless in a URL. */
static bool
valid_port(const char *s, size_t len, bool zero_ok)
{
    unsigned long port = 0;
    size_t i;

    if (len == 0 || len > 5)
        return false;
    for (i = 0; i < len; i++) {
        if (!is_digit(s[i]))
            return false;
        port = port * 10 + (unsigned long)(s[i] - '0');
    }
    return port <= 65535 && (port != 0 || zero_ok);
}

/*
 * A host name or IPv4 address. Text made only of digits and dots must be a
 * valid dotted quad, so "300.1.1.1" is caught here and not at bind time.
 */
static bool
valid_host(const char *s, size_t len)
{
    char copy[HOST_MAX_BYTES + 1];
    struct in_addr addr;
    bool numeric = true;
    size_t i;

    if (len == 0 || len > HOST_MAX_BYTES)
        return false;
    for (i = 0; i < len; i++) {
        if (!is_alnum(s[i]) && s[i] != '-' && s[i] != '.')
            return false;
        if (!is_digit(s[i]) && s[i] != '.')
            numeric = false;
    }
    if (!numeric)
        return true;

    memcpy(copy, s, len);
    copy[len] = '\0';
    return inet_pton(AF_INET, copy, &addr) == 1;
}

static bool
valid_ipv6(const char *s, size_t len)
{
    char copy[INET6_ADDRSTRLEN];
    struct in6_addr addr;

    if (len == 0 || len >= sizeof(copy))
        return false;
    memcpy(copy, s, len);
    copy[len] = '\0';
    return inet_pton(AF_INET6, copy, &addr) == 1;
}

/*
 * host:port or [IPv6]:port in the len bytes at s. A listener needs a port
 * and may use port 0; a URL may leave the port out. Returns false for a
 * bare IPv6 address, whose last group would read as the port.
 */
static bool
valid_authority(const char *s, size_t len, bool listener)
{
    const char *end = s + len;
    const char *host_end;
    const char *colon;

    if (len > 0 && s[0] == '[') {
        host_end = memchr(s, ']', len);
        if (host_end == NULL || !valid_ipv6(s + 1, (size_t)(host_end - s - 1)))
            return false;
        if (host_end + 1 == end)
            return !listener;
        if (host_end[1] != ':')
            return false;
        return valid_port(host_end + 2, (size_t)(end - host_end - 2),
                          listener);
    }

    colon = NULL;
    for (host_end = s; host_end < end; host_end++) {
        if (*host_end == ':')
            colon = host_end;
    }
    if (colon == NULL)
        return !listener && valid_host(s, len);
    return valid_host(s, (size_t)(colon - s)) &&
           valid_port(colon + 1, (size_t)(end - colon - 1), listener);
}

static bool
valid_listen(const char *value)
{
    static const size_t path_max = sizeof(((struct sockaddr_un *)0)->sun_path);

    if (strncmp(value, "unix:", 5) == 0) {
        const char *path = value + 5;

        /* sun_path must also hold the terminating NUL. */
        return path[0] == '/' && strlen(path) < path_max &&
               !has_bad_bytes(path);
    }
    return valid_authority(value, strlen(value), true);
}

/* Length of the "http://" or "https://" prefix of value, or 0. */
static size_t
url_scheme_len(const char *value)
{
    size_t len = strlen(value);

    if (len >= 7 && jg_ascii_casecmp_n(value, 7, "http://") == 0)
        return 7;
    if (len >= 8 && jg_ascii_casecmp_n(value, 8, "https://") == 0)
        return 8;
    return 0;
}

/*
 * Check an http or https base URL. On success *stripped_len is its length
 * without trailing slashes of the path. A query, a fragment, user info
 * (which would put a secret into the config dump) and blanks are rejected.
 */
static bool
valid_url(const char *value, size_t *stripped_len)
{
    size_t scheme = url_scheme_len(value);
    const char *authority = value + scheme;
    size_t authority_len;
    size_t len;

    if (scheme == 0 || has_bad_bytes(value) ||
        strpbrk(value, " ?#\\") != NULL)
        return false;

    authority_len = strcspn(authority, "/");
    if (!valid_authority(authority, authority_len, false))
        return false;

    len = strlen(value);
    while (len > scheme + authority_len && value[len - 1] == '/')
        len--;
    *stripped_len = len;
    return true;
}

/* Characters of a terminal_statuses list: names and their separators. */
static bool
valid_status_text(const char *value)
{
    for (; *value != '\0'; value++) {
        char c = *value;

        if (!is_alnum(c) && c != '_' && c != '-' && c != '.' && c != ',' &&
            c != ' ' && c != '\t')
            return false;
    }
    return true;
}

/*
 * Parse value into the field of def. The field is written only on
 * success, so a rejected value leaves the previous one in place.
 */
static bool
parse_value(const struct key_def *def, const char *value, void *field)
{
    size_t len = strlen(value);
    uint64_t number;
    int index;

    switch (def->type) {
    case KEY_PATH:
        if (len == 0 || len >= JG_CONFIG_STR_MAX || has_bad_bytes(value))
            return false;
        store_string(field, value, len);
        return true;

    case KEY_LISTEN:
        if (len >= JG_CONFIG_STR_MAX)
            return false;
        if (len == 0 && !(def->flags & KEY_EMPTY_OK))
            return false;
        if (len > 0 && !valid_listen(value))
            return false;
        store_string(field, value, len);
        return true;

    case KEY_URL:
        if (len >= JG_CONFIG_STR_MAX || !valid_url(value, &len))
            return false;
        store_string(field, value, len);
        return true;

    case KEY_UINT:
    case KEY_SECONDS:
    case KEY_MILLISECONDS:
    case KEY_BYTES: {
        const struct unit_suffix *suffixes =
            def->type == KEY_SECONDS        ? second_suffixes
            : def->type == KEY_MILLISECONDS ? millisecond_suffixes
            : def->type == KEY_BYTES        ? byte_suffixes
                                            : count_suffixes;

        if (parse_scaled(value, suffixes, &number) != 0 ||
            number < def->min || number > def->max)
            return false;
        memcpy(field, &number, sizeof(number));
        return true;
    }

    case KEY_ENUM:
        for (index = 0; def->choices[index] != NULL; index++) {
            if (strcmp(def->choices[index], value) == 0) {
                memcpy(field, &index, sizeof(index));
                return true;
            }
        }
        return false;

    case KEY_STATUSES: {
        struct jg_status_set set;

        memset(&set, 0, sizeof(set));
        if (!valid_status_text(value) || jg_status_set_parse(&set, value) != 0)
            return false;
        memcpy(field, &set, sizeof(set));
        return true;
    }

    case KEY_LOG_LEVEL:
        index = jg_log_level_parse(value);
        if (index < 0)
            return false;
        memcpy(field, &index, sizeof(index));
        return true;
    }
    return false;
}

/* Write what a valid value of def looks like, after "expected ". */
static void
describe_expected(const struct key_def *def, char *out, size_t outlen)
{
    switch (def->type) {
    case KEY_PATH:
        snprintf(out, outlen,
                 "a non-empty path of at most %d bytes without control "
                 "characters or double quotes",
                 JG_CONFIG_STR_MAX - 1);
        return;
    case KEY_LISTEN:
        snprintf(out, outlen,
                 "host:port, [IPv6]:port or unix:/absolute/path%s",
                 (def->flags & KEY_EMPTY_OK) ? ", or an empty value to disable"
                                             : "");
        return;
    case KEY_URL:
        snprintf(out, outlen,
                 "an http:// or https:// URL with a host, an optional port "
                 "and path, and no user info, query or fragment");
        return;
    case KEY_UINT:
        snprintf(out, outlen, "an integer from %" PRIu64 " to %" PRIu64
                 " (%s)", def->min, def->max, def->unit);
        return;
    case KEY_SECONDS:
        snprintf(out, outlen, "a duration in seconds from %" PRIu64 " to %"
                 PRIu64 ", optionally with suffix s, m, h or d",
                 def->min, def->max);
        return;
    case KEY_MILLISECONDS:
        snprintf(out, outlen, "a duration in milliseconds from %" PRIu64
                 " to %" PRIu64 ", optionally with suffix ms or s",
                 def->min, def->max);
        return;
    case KEY_BYTES:
        snprintf(out, outlen, "a size in bytes from %" PRIu64 " to %" PRIu64
                 ", optionally with suffix k, m or g (KiB, MiB, GiB)",
                 def->min, def->max);
        return;
    case KEY_ENUM: {
        size_t used = (size_t)snprintf(out, outlen, "one of");
        size_t i;

        for (i = 0; def->choices[i] != NULL && used < outlen; i++)
            used += (size_t)snprintf(out + used, outlen - used, "%s %s",
                                     i == 0 ? "" : ",", def->choices[i]);
        return;
    }
    case KEY_STATUSES:
        snprintf(out, outlen,
                 "a comma-separated list of 1 to %d status names, each of "
                 "1 to %d letters, digits, '_', '-' or '.'",
                 JG_MAX_STATUSES, JG_MAX_STATUS_LEN - 1);
        return;
    case KEY_LOG_LEVEL:
        snprintf(out, outlen, "one of error, warn, info, debug");
        return;
    }
}

/* Write the field of def as text that parse_value() reads back. */
static void
format_value(const struct key_def *def, const struct jg_config *cfg,
             char *out, size_t outlen)
{
    const void *field = const_field_of(cfg, def);
    uint64_t number;
    int index;

    switch (def->type) {
    case KEY_PATH:
    case KEY_LISTEN:
    case KEY_URL:
        snprintf(out, outlen, "%s", (const char *)field);
        return;
    case KEY_UINT:
    case KEY_SECONDS:
    case KEY_MILLISECONDS:
    case KEY_BYTES:
        memcpy(&number, field, sizeof(number));
        snprintf(out, outlen, "%" PRIu64, number);
        return;
    case KEY_ENUM:
        memcpy(&index, field, sizeof(index));
        snprintf(out, outlen, "%s", def->choices[index]);
        return;
    case KEY_STATUSES: {
        const struct jg_status_set *set = field;
        size_t used = 0;
        size_t i;

        out[0] = '\0';
        for (i = 0; i < set->count && used < outlen; i++)
            used += (size_t)snprintf(out + used, outlen - used, "%s%s",
                                     i == 0 ? "" : ",", set->names[i]);
        return;
    }
    case KEY_LOG_LEVEL:
        memcpy(&index, field, sizeof(index));
        snprintf(out, outlen, "%s",
                 jg_log_level_name((enum jg_log_level)index));
        return;
    }
}

static int
set_key(struct jg_config *cfg, const struct key_def *def, const char *value,
        const char *origin, char *err, size_t errlen)
{
    char quoted[QUOTE_MAX_BYTES * 4 + 8];
    char expected[256];

    if (parse_value(def, value, field_of(cfg, def))) {
        char *slot = cfg->origins[def - config_keys];
        size_t n = strnlen(origin, sizeof(cfg->origins[0]) - 1);

        memcpy(slot, origin, n);
        slot[n] = '\0';
        return 0;
    }

    quote_value(value, quoted, sizeof(quoted));
    describe_expected(def, expected, sizeof(expected));
    set_error(err, errlen, "%s: key \"%s\": invalid value \"%s\": expected %s",
              origin, def->name, quoted, expected);
    return -1;
}

void
jg_config_defaults(struct jg_config *cfg)
{
    char err[512];
    size_t i;

    memset(cfg, 0, sizeof(*cfg));
    for (i = 0; i < JG_ARRAY_LEN(config_keys); i++) {
        const struct key_def *def = &config_keys[i];

        /* A default that fails its own key's check is a bug in the table. */
        if (set_key(cfg, def, def->default_value, "built-in default", err,
                    sizeof(err)) != 0) {
            fprintf(stderr, "jobgate: %s\n", err);
            abort();
        }
    }
}

int
jg_config_set(struct jg_config *cfg, const char *key, const char *value,
              const char *origin, char *err, size_t errlen)
{
    const struct key_def *def = find_key(key);
    char quoted[QUOTE_MAX_BYTES * 4 + 8];

    if (def == NULL) {
        quote_value(key, quoted, sizeof(quoted));
        set_error(err, errlen,
                  "%s: unknown key \"%s\": expected a key documented in "
                  "config/jobgate.conf",
                  origin, quoted);
        return -1;
    }
    return set_key(cfg, def, value, origin, err, errlen);
}

enum line_status {
    LINE_OK,
    LINE_EOF,
    LINE_TOO_LONG,
    LINE_NUL,
    LINE_READ_ERROR,
};

/*
 * Read one line without its newline into buf. A line longer than the
 * buffer is consumed to its end and reported, so the next call starts on
 * the following line.
 */
static enum line_status
read_line(FILE *f, char *buf, size_t size)
{
    enum line_status status = LINE_OK;
    size_t len = 0;
    int c;

    for (;;) {
        c = getc(f);
        if (c == EOF || c == '\n')
            break;
        if (c == '\0')
            status = LINE_NUL;
        if (len + 1 < size)
            buf[len++] = (char)c;
        else if (status == LINE_OK)
            status = LINE_TOO_LONG;
    }
    buf[len] = '\0';

    if (c == EOF && ferror(f))
        return LINE_READ_ERROR;
    if (c == EOF && len == 0 && status == LINE_OK)
        return LINE_EOF;
    return status;
}

static bool
is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

static char *
trim(char *s)
{
    size_t len;

    while (is_blank(*s))
        s++;
    len = strlen(s);
    while (len > 0 && is_blank(s[len - 1]))
        s[--len] = '\0';
    return s;
}

/*
 * Split the text after '=' into the value: either a double-quoted string,
 * taken as is, or the text up to a '#' that follows a blank. Only blanks
 * and a comment may follow a closing quote. Returns the value, or NULL with
 * the reason in *problem.
 */
static char *
split_value(char *text, const char **problem)
{
    char *close;
    char *rest;
    char *p;

    text = trim(text);
    if (text[0] == '"') {
        close = strchr(text + 1, '"');
        if (close == NULL) {
            *problem = "missing closing double quote";
            return NULL;
        }
        *close = '\0';
        rest = trim(close + 1);
        if (rest[0] != '\0' && (rest[0] != '#' || !is_blank(close[1]))) {
            *problem = "text after the closing double quote";
            return NULL;
        }
        return text + 1;
    }

    for (p = text; *p != '\0'; p++) {
        if (*p == '#' && p > text && is_blank(p[-1])) {
            *p = '\0';
            break;
        }
    }
    return trim(text);
}

/* Position in config_keys[] of def, for the per-file duplicate check. */
static size_t
key_index(const struct key_def *def)
{
    return (size_t)(def - config_keys);
}

/*
 * Apply one line of the file. first_line[i] is the line that set key i,
 * or 0; origin is "path:line".
 */
static int
apply_line(struct jg_config *cfg, char *line, const char *origin,
           unsigned lineno, unsigned first_line[], char *err, size_t errlen)
{
    char quoted[QUOTE_MAX_BYTES * 4 + 8];
    const struct key_def *def;
    const char *problem = NULL;
    char *text = trim(line);
    char *equals;
    char *key;
    char *value;

    if (text[0] == '\0' || text[0] == '#')
        return 0;

    equals = strchr(text, '=');
    quote_value(text, quoted, sizeof(quoted));
    if (equals == NULL) {
        set_error(err, errlen, "%s: missing \"=\" in \"%s\": expected "
                  "key = value", origin, quoted);
        return -1;
    }
    *equals = '\0';
    key = trim(text);
    if (key[0] == '\0') {
        set_error(err, errlen, "%s: empty key in \"%s\": expected "
                  "key = value", origin, quoted);
        return -1;
    }

    value = split_value(equals + 1, &problem);
    if (value == NULL) {
        set_error(err, errlen, "%s: key \"%s\": %s in \"%s\": expected "
                  "key = value or key = \"value\"", origin, key, problem,
                  quoted);
        return -1;
    }

    def = find_key(key);
    if (def != NULL && first_line[key_index(def)] != 0) {
        quote_value(value, quoted, sizeof(quoted));
        set_error(err, errlen, "%s: key \"%s\": duplicate value \"%s\": "
                  "expected each key once per file, first set on line %u",
                  origin, key, quoted, first_line[key_index(def)]);
        return -1;
    }
    if (jg_config_set(cfg, key, value, origin, err, errlen) != 0)
        return -1;
    first_line[key_index(def)] = lineno;
    return 0;
}

int
jg_config_load_file(struct jg_config *cfg, const char *path, char *err,
                    size_t errlen)
{
    unsigned first_line[JG_ARRAY_LEN(config_keys)] = {0};
    char line[LINE_MAX_BYTES];
    char origin[JG_CONFIG_STR_MAX + 16];
    enum line_status status;
    unsigned lineno = 0;
    int rc = -1;
    FILE *f;

    f = fopen(path, "r");
    if (f == NULL) {
        set_error(err, errlen, "%s: cannot open config file: %s", path,
                  strerror(errno));
        return -1;
    }

    for (;;) {
        status = read_line(f, line, sizeof(line));
        if (status == LINE_EOF)
            break;
        lineno++;
        snprintf(origin, sizeof(origin), "%s:%u", path, lineno);

        if (status == LINE_READ_ERROR) {
            set_error(err, errlen, "%s: read failed: %s", origin,
                      strerror(errno));
            goto out;
        }
        if (status == LINE_NUL) {
            set_error(err, errlen, "%s: NUL byte in line: expected text",
                      origin);
            goto out;
        }
        if (status == LINE_TOO_LONG) {
            set_error(err, errlen, "%s: line longer than %d bytes: expected "
                      "a shorter line", origin, LINE_MAX_BYTES - 1);
            goto out;
        }
        if (apply_line(cfg, line, origin, lineno, first_line, err,
                       errlen) != 0)
            goto out;
    }
    rc = 0;

out:
    fclose(f);
    return rc;
}

int
jg_config_load_env(struct jg_config *cfg, char *const *envp, char *err,
                   size_t errlen)
{
    static const char prefix[] = "JOBGATE_";
    const size_t prefix_len = sizeof(prefix) - 1;
    char origin[256];
    size_t i;

    for (i = 0; envp[i] != NULL; i++) {
        const char *entry = envp[i];
        const char *equals = strchr(entry, '=');
        const struct key_def *def;
        size_t name_len;

        if (equals == NULL || strncmp(entry, prefix, prefix_len) != 0)
            continue;
        name_len = (size_t)(equals - entry);
        snprintf(origin, sizeof(origin), "environment %.*s", (int)name_len,
                 entry);

        def = find_env_key(entry + prefix_len, name_len - prefix_len);
        if (def == NULL) {
            set_error(err, errlen, "%s: unknown variable: expected JOBGATE_ "
                      "followed by a key name in upper case, such as "
                      "JOBGATE_AUTH_TTL", origin);
            return -1;
        }
        if (set_key(cfg, def, equals + 1, origin, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* Whether a listen value ends in port 0, which picks a new port per bind. */
static bool
picks_any_port(const char *listen)
{
    size_t len = strlen(listen);

    return len >= 2 && strcmp(listen + len - 2, ":0") == 0 &&
           strncmp(listen, "unix:", 5) != 0;
}

/* Where the value of a key came from, for errors about two keys. */
static const char *
origin_of(const struct jg_config *cfg, const char *key)
{
    const struct key_def *def = find_key(key);

    return def != NULL ? cfg->origins[def - config_keys] : "config";
}

int
jg_config_check(const struct jg_config *cfg, char *err, size_t errlen)
{
    size_t url_len;

    /* NOTE: this compares text, so two spellings of one address, such as
     * localhost:8080 and 127.0.0.1:8080, pass here and fail at bind time. */
    if (cfg->admin_listen[0] != '\0' &&
        strcmp(cfg->listen, cfg->admin_listen) == 0 &&
        !picks_any_port(cfg->listen)) {
        set_error(err, errlen, "%s: keys \"listen\" and \"admin_listen\" "
                  "both have value \"%s\" (admin_listen from %s): expected "
                  "two different addresses", origin_of(cfg, "listen"),
                  cfg->listen, origin_of(cfg, "admin_listen"));
        return -1;
    }
    if (!valid_url(cfg->upstream, &url_len)) {
        set_error(err, errlen, "%s: key \"upstream\": invalid value "
                  "\"%s\": expected an http:// or https:// URL",
                  origin_of(cfg, "upstream"), cfg->upstream);
        return -1;
    }
    if (cfg->upstream_connect_timeout_ms > cfg->upstream_timeout_ms) {
        set_error(err, errlen, "%s: key \"upstream_connect_timeout_ms\": "
                  "value %" PRIu64 " exceeds upstream_timeout_ms %" PRIu64
                  " (from %s): expected a connect timeout within the whole "
                  "timeout", origin_of(cfg, "upstream_connect_timeout_ms"),
                  cfg->upstream_connect_timeout_ms, cfg->upstream_timeout_ms,
                  origin_of(cfg, "upstream_timeout_ms"));
        return -1;
    }
    if (cfg->max_body_bytes > cfg->max_passthrough_bytes) {
        set_error(err, errlen, "%s: key \"max_body_bytes\": value %"
                  PRIu64 " exceeds max_passthrough_bytes %" PRIu64
                  " (from %s): expected cacheable bodies to be small enough "
                  "to relay", origin_of(cfg, "max_body_bytes"),
                  cfg->max_body_bytes, cfg->max_passthrough_bytes,
                  origin_of(cfg, "max_passthrough_bytes"));
        return -1;
    }
    if (cfg->max_body_bytes > cfg->cache_max_bytes) {
        set_error(err, errlen, "%s: key \"max_body_bytes\": value %"
                  PRIu64 " exceeds cache_max_bytes %" PRIu64
                  " (from %s): expected a cacheable body to fit in the cache",
                  origin_of(cfg, "max_body_bytes"), cfg->max_body_bytes,
                  cfg->cache_max_bytes, origin_of(cfg, "cache_max_bytes"));
        return -1;
    }
    if (cfg->upstream_max_connections < cfg->workers) {
        set_error(err, errlen, "%s: key \"upstream_max_connections\": value %"
                  PRIu64 " is below workers %" PRIu64 " (from %s): expected "
                  "at least one upstream connection per worker",
                  origin_of(cfg, "upstream_max_connections"),
                  cfg->upstream_max_connections, cfg->workers,
                  origin_of(cfg, "workers"));
        return -1;
    }
    if (cfg->max_connections < cfg->workers) {
        set_error(err, errlen, "%s: key \"max_connections\": value %" PRIu64
                  " is below workers %" PRIu64 " (from %s): expected at "
                  "least one client connection per worker",
                  origin_of(cfg, "max_connections"), cfg->max_connections,
                  cfg->workers, origin_of(cfg, "workers"));
        return -1;
    }
    return 0;
}

/* Values with blanks or '#' are quoted so that the file reader takes them
 * whole. No value contains a double quote, because every string type
 * rejects it. */
static bool
needs_quotes(const char *value)
{
    return value[0] == '\0' || strpbrk(value, " \t#") != NULL;
}

void
jg_config_dump(const struct jg_config *cfg, FILE *out)
{
    char value[JG_CONFIG_STR_MAX];
    size_t i;

    for (i = 0; i < JG_ARRAY_LEN(config_keys); i++) {
        const struct key_def *def = &config_keys[i];

        format_value(def, cfg, value, sizeof(value));
        if (needs_quotes(value))
            fprintf(out, "%s = \"%s\"\n", def->name, value);
        else
            fprintf(out, "%s = %s\n", def->name, value);
    }
}

void
jg_config_usage(FILE *out)
{
    char expected[256];
    size_t i;

    for (i = 0; i < JG_ARRAY_LEN(config_keys); i++) {
        const struct key_def *def = &config_keys[i];

        describe_expected(def, expected, sizeof(expected));
        fprintf(out, "  %s (default \"%s\")\n      %s.\n      Value: %s.\n",
                def->name, def->default_value, def->help, expected);
    }
}
