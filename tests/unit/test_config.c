/*
 * Unit tests of the configuration table: defaults, every value type with
 * good and bad values and their bounds, file syntax, error text,
 * environment overrides, cross-field checks, the dump round trip and the
 * shipped sample config/jobgate.conf.
 *
 * The sample is found through the JOBGATE_SOURCE_DIR environment variable
 * (the source tree), or else at ../config/jobgate.conf relative to the
 * working directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobgate/jg_config.h"

#define KIB ((uint64_t)1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)

#define assert_contains(text, part)                                            \
    do {                                                                       \
        if (strstr((text), (part)) == NULL)                                    \
            fail_msg("\"%s\" does not contain \"%s\"", (text), (part));        \
    } while (0)

/* Numeric keys and their fields, so table-driven cases can read values. */
static const struct {
    const char *key;
    size_t offset;
} number_fields[] = {
    {"terminal_ttl", offsetof(struct jg_config, terminal_ttl_s)},
    {"cache_max_bytes", offsetof(struct jg_config, cache_max_bytes)},
    {"auth_ttl", offsetof(struct jg_config, auth_ttl_s)},
    {"upstream_timeout_ms", offsetof(struct jg_config, upstream_timeout_ms)},
    {"upstream_connect_timeout_ms",
     offsetof(struct jg_config, upstream_connect_timeout_ms)},
    {"upstream_max_connections",
     offsetof(struct jg_config, upstream_max_connections)},
    {"max_body_bytes", offsetof(struct jg_config, max_body_bytes)},
    {"max_passthrough_bytes",
     offsetof(struct jg_config, max_passthrough_bytes)},
    {"max_request_body_bytes",
     offsetof(struct jg_config, max_request_body_bytes)},
    {"client_header_timeout_ms",
     offsetof(struct jg_config, client_header_timeout_ms)},
    {"client_timeout_ms", offsetof(struct jg_config, client_timeout_ms)},
    {"max_header_bytes", offsetof(struct jg_config, max_header_bytes)},
    {"max_headers", offsetof(struct jg_config, max_headers)},
    {"max_uri_bytes", offsetof(struct jg_config, max_uri_bytes)},
    {"max_connections", offsetof(struct jg_config, max_connections)},
    {"max_principals", offsetof(struct jg_config, max_principals)},
    {"max_waiters", offsetof(struct jg_config, max_waiters)},
    {"drain_timeout_ms", offsetof(struct jg_config, drain_timeout_ms)},
};

static uint64_t
number_field(const struct jg_config *cfg, const char *key)
{
    size_t i;
    uint64_t value;

    for (i = 0; i < sizeof(number_fields) / sizeof(number_fields[0]); i++) {
        if (strcmp(number_fields[i].key, key) == 0) {
            memcpy(&value, (const char *)cfg + number_fields[i].offset,
                   sizeof(value));
            return value;
        }
    }
    fail_msg("no numeric field for key %s", key);
    return 0;
}

static void
assert_status_set_equal(const struct jg_status_set *a,
                        const struct jg_status_set *b)
{
    size_t i;

    assert_int_equal(a->count, b->count);
    for (i = 0; i < a->count; i++)
        assert_string_equal(a->names[i], b->names[i]);
}

/* Compare field by field, independently of the config module's table. */
static void
assert_config_equal(const struct jg_config *a, const struct jg_config *b)
{
    size_t i;

    assert_string_equal(a->listen, b->listen);
    assert_string_equal(a->admin_listen, b->admin_listen);
    assert_string_equal(a->upstream, b->upstream);
    assert_string_equal(a->cache_dir, b->cache_dir);
    assert_status_set_equal(&a->terminal_statuses, &b->terminal_statuses);
    assert_int_equal(a->share_scope, b->share_scope);
    assert_int_equal(a->log_level, b->log_level);
    for (i = 0; i < sizeof(number_fields) / sizeof(number_fields[0]); i++) {
        const char *key = number_fields[i].key;

        if (number_field(a, key) != number_field(b, key))
            fail_msg("key %s: %llu != %llu", key,
                     (unsigned long long)number_field(a, key),
                     (unsigned long long)number_field(b, key));
    }
}

/* Write text to a new temporary file whose name goes into path. */
static void
write_temp_file(const char *text, size_t len, char path[64])
{
    FILE *f;
    int fd;

    snprintf(path, 64, "/tmp/jg-test-config-XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Load text as a config file on top of cfg; the file name goes into path. */
static int
load_text_at(struct jg_config *cfg, const char *text, char *err,
             size_t errlen, char path[64])
{
    int rc;

    write_temp_file(text, strlen(text), path);
    rc = jg_config_load_file(cfg, path, err, errlen);
    unlink(path);
    return rc;
}

static int
load_text(struct jg_config *cfg, const char *text, char *err, size_t errlen)
{
    char path[64];

    return load_text_at(cfg, text, err, errlen, path);
}

static void
set_ok(struct jg_config *cfg, const char *key, const char *value)
{
    char err[512] = "";

    if (jg_config_set(cfg, key, value, "test", err, sizeof(err)) != 0)
        fail_msg("%s = \"%s\" rejected: %s", key, value, err);
}

/*
 * Expect the value to be rejected with a message naming the key and the
 * value, and the configuration to stay as it was.
 */
static void
set_fails(const char *key, const char *value)
{
    struct jg_config cfg;
    struct jg_config before;
    char err[1024] = "";
    char part[256];

    jg_config_defaults(&cfg);
    before = cfg;
    if (jg_config_set(&cfg, key, value, "test", err, sizeof(err)) == 0)
        fail_msg("%s = \"%s\" accepted", key, value);
    snprintf(part, sizeof(part), "test: key \"%s\": invalid value", key);
    assert_contains(err, part);
    assert_contains(err, ": expected ");
    assert_config_equal(&cfg, &before);
}

struct number_case {
    const char *key;
    const char *value;
    uint64_t expected;
};

static void
check_number_cases(const struct number_case *cases, size_t count)
{
    struct jg_config cfg;
    size_t i;

    for (i = 0; i < count; i++) {
        jg_config_defaults(&cfg);
        set_ok(&cfg, cases[i].key, cases[i].value);
        if (number_field(&cfg, cases[i].key) != cases[i].expected)
            fail_msg("%s = \"%s\": got %llu, expected %llu", cases[i].key,
                     cases[i].value,
                     (unsigned long long)number_field(&cfg, cases[i].key),
                     (unsigned long long)cases[i].expected);
    }
}

static void
test_defaults_values(void **state)
{
    struct jg_config cfg;

    (void)state;
    jg_config_defaults(&cfg);

    assert_string_equal(cfg.listen, "127.0.0.1:8080");
    assert_string_equal(cfg.admin_listen, "127.0.0.1:8081");
    assert_string_equal(cfg.upstream, "https://api.galileo.ai");
    assert_string_equal(cfg.cache_dir, "cache");
    assert_int_equal(cfg.terminal_statuses.count, 4);
    assert_string_equal(cfg.terminal_statuses.names[0], "completed");
    assert_string_equal(cfg.terminal_statuses.names[1], "failed");
    assert_string_equal(cfg.terminal_statuses.names[2], "error");
    assert_string_equal(cfg.terminal_statuses.names[3], "cancelled");
    assert_int_equal(cfg.terminal_ttl_s, 86400);
    assert_int_equal(cfg.cache_max_bytes, GIB);
    assert_int_equal(cfg.auth_ttl_s, 60);
    assert_int_equal(cfg.share_scope, JG_SHARE_ORG);
    assert_int_equal(cfg.upstream_timeout_ms, 10000);
    assert_int_equal(cfg.upstream_connect_timeout_ms, 2000);
    assert_int_equal(cfg.upstream_max_connections, 64);
    assert_int_equal(cfg.max_body_bytes, 65536);
    assert_int_equal(cfg.max_passthrough_bytes, 16 * MIB);
    assert_int_equal(cfg.max_request_body_bytes, MIB);
    assert_int_equal(cfg.client_header_timeout_ms, 10000);
    assert_int_equal(cfg.client_timeout_ms, 60000);
    assert_int_equal(cfg.max_header_bytes, 16384);
    assert_int_equal(cfg.max_headers, 100);
    assert_int_equal(cfg.max_uri_bytes, 8192);
    assert_int_equal(cfg.max_connections, 10000);
    assert_int_equal(cfg.max_principals, 100000);
    assert_int_equal(cfg.max_waiters, 1000);
    assert_int_equal(cfg.drain_timeout_ms, 10000);
    assert_int_equal(cfg.log_level, JG_LOG_INFO);
}

static void
test_defaults_pass_check(void **state)
{
    struct jg_config cfg;
    char err[512] = "";

    (void)state;
    jg_config_defaults(&cfg);
    if (jg_config_check(&cfg, err, sizeof(err)) != 0)
        fail_msg("defaults fail the check: %s", err);
}

static void
test_listen_values(void **state)
{
    static const char *const good[] = {
        "127.0.0.1:1",     "0.0.0.0:65535",    "localhost:80",
        "[::1]:8080",      "[::]:0",           "127.0.0.1:0",
        "unix:/tmp/j.sock", "gw-1.example.org:443",
    };
    static const char *const bad[] = {
        "",              "127.0.0.1",      "127.0.0.1:",   "127.0.0.1:65536",
        "127.0.0.1:80x", "127.0.0.1:-1",   "::1:8080",     "[::1]",
        "[::1]8080",     "[zz::1]:80",     "[::1:80",      "300.1.1.1:80",
        "1.2.3:80",      ":8080",          "host name:80", "host_x:80",
        "unix:",         "unix:rel/path",  "unix:/a\nb",   "tcp:1.2.3.4:80",
        "127.0.0.1:123456",
    };
    char long_path[200];
    struct jg_config cfg;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        jg_config_defaults(&cfg);
        set_ok(&cfg, "listen", good[i]);
        assert_string_equal(cfg.listen, good[i]);
        set_ok(&cfg, "admin_listen", good[i]);
        assert_string_equal(cfg.admin_listen, good[i]);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        set_fails("listen", bad[i]);
        if (bad[i][0] != '\0')
            set_fails("admin_listen", bad[i]);
    }

    /* The admin listener alone may be disabled. */
    jg_config_defaults(&cfg);
    set_ok(&cfg, "admin_listen", "");
    assert_string_equal(cfg.admin_listen, "");

    /* sun_path has room for 108 bytes including the NUL, so 107 path
     * bytes fit. */
    memset(long_path, 'a', sizeof(long_path));
    memcpy(long_path, "unix:/", 6);
    long_path[5 + 107] = '\0';
    set_ok(&cfg, "listen", long_path);
    long_path[5 + 107] = 'a';
    long_path[5 + 108] = '\0';
    set_fails("listen", long_path);
}

static void
test_upstream_values(void **state)
{
    static const struct {
        const char *value;
        const char *stored;
    } good[] = {
        {"https://api.galileo.ai", "https://api.galileo.ai"},
        {"https://api.galileo.ai/", "https://api.galileo.ai"},
        {"http://127.0.0.1:9000", "http://127.0.0.1:9000"},
        {"http://127.0.0.1:9000/api/v1//", "http://127.0.0.1:9000/api/v1"},
        {"HTTPS://Api.Example", "HTTPS://Api.Example"},
        {"http://[::1]:8443/x", "http://[::1]:8443/x"},
        {"http://[::1]", "http://[::1]"},
    };
    static const char *const bad[] = {
        "",
        "api.galileo.ai",
        "ftp://api.galileo.ai",
        "https://",
        "https:///path",
        "https://:443",
        "https://host:0",
        "https://host:65536",
        "https://host?x=1",
        "https://host/a#frag",
        "https://user:secret@host",
        "https://host name",
        "https://host/a b",
        "https://host/\"x\"",
        "https://host\\x",
        "https://::1/",
    };
    struct jg_config cfg;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        jg_config_defaults(&cfg);
        set_ok(&cfg, "upstream", good[i].value);
        assert_string_equal(cfg.upstream, good[i].stored);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        set_fails("upstream", bad[i]);
}

static void
test_cache_dir_values(void **state)
{
    char long_value[JG_CONFIG_STR_MAX + 1];
    struct jg_config cfg;

    (void)state;
    jg_config_defaults(&cfg);
    set_ok(&cfg, "cache_dir", "/var/lib/jobgate");
    assert_string_equal(cfg.cache_dir, "/var/lib/jobgate");
    set_ok(&cfg, "cache_dir", "relative dir #2");
    assert_string_equal(cfg.cache_dir, "relative dir #2");

    set_fails("cache_dir", "");
    set_fails("cache_dir", "a\"b");
    set_fails("cache_dir", "a\nb");
    set_fails("cache_dir", "a\tb");

    memset(long_value, 'd', sizeof(long_value));
    long_value[JG_CONFIG_STR_MAX - 1] = '\0';
    set_ok(&cfg, "cache_dir", long_value);
    assert_int_equal(strlen(cfg.cache_dir), JG_CONFIG_STR_MAX - 1);
    long_value[JG_CONFIG_STR_MAX - 1] = 'd';
    long_value[JG_CONFIG_STR_MAX] = '\0';
    set_fails("cache_dir", long_value);
}

static void
test_integer_bounds(void **state)
{
    static const struct number_case good[] = {
        {"upstream_max_connections", "1", 1},
        {"upstream_max_connections", "4096", 4096},
        {"upstream_max_connections", "0064", 64},
        {"max_headers", "1", 1},
        {"max_headers", "10000", 10000},
        {"max_connections", "1000000", 1000000},
        {"max_principals", "10000000", 10000000},
        {"max_waiters", "1", 1},
    };
    static const struct {
        const char *key;
        const char *value;
    } bad[] = {
        {"upstream_max_connections", "0"},
        {"upstream_max_connections", "4097"},
        {"upstream_max_connections", "-1"},
        {"upstream_max_connections", "+1"},
        {"upstream_max_connections", " 1"},
        {"upstream_max_connections", "1 "},
        {"upstream_max_connections", "0x10"},
        {"upstream_max_connections", "1k"},
        {"upstream_max_connections", "1.0"},
        {"upstream_max_connections", ""},
        {"max_headers", "10001"},
        {"max_connections", "1000001"},
        {"max_principals", "0"},
        {"max_waiters", "1000001"},
    };
    size_t i;

    (void)state;
    check_number_cases(good, sizeof(good) / sizeof(good[0]));
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        set_fails(bad[i].key, bad[i].value);
}

static void
test_seconds_with_suffixes(void **state)
{
    static const struct number_case good[] = {
        {"terminal_ttl", "0", 0},
        {"terminal_ttl", "90", 90},
        {"terminal_ttl", "90s", 90},
        {"terminal_ttl", "2m", 120},
        {"terminal_ttl", "1h", 3600},
        {"terminal_ttl", "1d", 86400},
        {"terminal_ttl", "1D", 86400},
        {"terminal_ttl", "3650d", 3650 * 86400ULL},
        {"auth_ttl", "1", 1},
        {"auth_ttl", "86400", 86400},
        {"auth_ttl", "24h", 86400},
        {"auth_ttl", "1d", 86400},
    };
    static const struct {
        const char *key;
        const char *value;
    } bad[] = {
        {"terminal_ttl", "3651d"},  {"terminal_ttl", "1x"},
        {"terminal_ttl", "s"},      {"terminal_ttl", "1.5h"},
        {"terminal_ttl", "1 h"},    {"terminal_ttl", "h1"},
        {"terminal_ttl", "-1"},     {"terminal_ttl", "1ms"},
        {"terminal_ttl", "1hh"},    {"auth_ttl", "0"},
        {"auth_ttl", "-5"},         {"auth_ttl", "86401"},
        {"auth_ttl", "2d"},         {"auth_ttl", "0s"},
    };
    size_t i;

    (void)state;
    check_number_cases(good, sizeof(good) / sizeof(good[0]));
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        set_fails(bad[i].key, bad[i].value);
}

static void
test_milliseconds_with_suffixes(void **state)
{
    static const struct number_case good[] = {
        {"upstream_timeout_ms", "1500", 1500},
        {"upstream_timeout_ms", "1500ms", 1500},
        {"upstream_timeout_ms", "2s", 2000},
        {"upstream_timeout_ms", "2S", 2000},
        {"upstream_timeout_ms", "2MS", 2},
        {"upstream_timeout_ms", "1", 1},
        {"upstream_timeout_ms", "3600s", 3600000},
        {"client_timeout_ms", "86400s", 86400000},
        {"drain_timeout_ms", "0", 0},
    };
    static const struct {
        const char *key;
        const char *value;
    } bad[] = {
        {"upstream_timeout_ms", "0"},      {"upstream_timeout_ms", "2m"},
        {"upstream_timeout_ms", "1h"},     {"upstream_timeout_ms", "3601s"},
        {"upstream_timeout_ms", "3600001"}, {"upstream_timeout_ms", "ms"},
        {"client_header_timeout_ms", "0ms"}, {"client_timeout_ms", "86401s"},
        {"drain_timeout_ms", "3600001"},
    };
    size_t i;

    (void)state;
    check_number_cases(good, sizeof(good) / sizeof(good[0]));
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        set_fails(bad[i].key, bad[i].value);
}

static void
test_sizes_with_suffixes(void **state)
{
    static const struct number_case good[] = {
        {"cache_max_bytes", "1m", MIB},
        {"cache_max_bytes", "1M", MIB},
        {"cache_max_bytes", "1048576", MIB},
        {"cache_max_bytes", "1024k", MIB},
        {"cache_max_bytes", "2G", 2 * GIB},
        {"cache_max_bytes", "16384g", 16384 * GIB},
        {"max_body_bytes", "64k", 64 * KIB},
        {"max_body_bytes", "1", 1},
        {"max_body_bytes", "64m", 64 * MIB},
        {"max_passthrough_bytes", "1g", GIB},
        {"max_request_body_bytes", "0", 0},
        {"max_header_bytes", "1k", KIB},
        {"max_uri_bytes", "64", 64},
    };
    static const struct {
        const char *key;
        const char *value;
    } bad[] = {
        {"cache_max_bytes", "1023k"},   {"cache_max_bytes", "1048575"},
        {"cache_max_bytes", "16385g"},  {"cache_max_bytes", "1kb"},
        {"cache_max_bytes", "1KiB"},    {"cache_max_bytes", "1t"},
        {"cache_max_bytes", "k"},       {"max_body_bytes", "0"},
        {"max_body_bytes", "65m"},      {"max_passthrough_bytes", "2g"},
        {"max_header_bytes", "1023"},   {"max_uri_bytes", "63"},
        {"max_uri_bytes", "2m"},
    };
    size_t i;

    (void)state;
    check_number_cases(good, sizeof(good) / sizeof(good[0]));
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        set_fails(bad[i].key, bad[i].value);
}

static void
test_number_overflow(void **state)
{
    static const struct {
        const char *key;
        const char *value;
    } cases[] = {
        {"max_connections", "99999999999999999999999"},
        {"cache_max_bytes", "99999999999999999999999"},
        {"terminal_ttl", "99999999999999999999999"},
        {"upstream_timeout_ms", "99999999999999999999999"},
        /* UINT64_MAX itself parses, then fails the bound. */
        {"max_connections", "18446744073709551615"},
        {"max_connections", "18446744073709551616"},
        /* 2^64 + 100: a parser that wraps would read 100 and accept it. */
        {"max_connections", "18446744073709551716"},
        /* The digits fit, the suffix multiplication does not. */
        {"cache_max_bytes", "17179869184g"},
        {"terminal_ttl", "213503982334602d"},
        {"upstream_timeout_ms", "18446744073709552s"},
    };
    struct jg_config cfg;
    char err[1024];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        set_fails(cases[i].key, cases[i].value);

    jg_config_defaults(&cfg);
    assert_int_equal(jg_config_set(&cfg, "max_connections",
                                   "99999999999999999999999", "test", err,
                                   sizeof(err)), -1);
    assert_string_equal(err, "test: key \"max_connections\": invalid value "
                        "\"99999999999999999999999\": expected an integer "
                        "from 1 to 1000000 (connections)");
}

static void
test_enum_and_log_level(void **state)
{
    static const struct {
        const char *value;
        enum jg_log_level level;
    } levels[] = {
        {"error", JG_LOG_ERROR},
        {"warn", JG_LOG_WARN},
        {"info", JG_LOG_INFO},
        {"debug", JG_LOG_DEBUG},
    };
    struct jg_config cfg;
    size_t i;

    (void)state;
    jg_config_defaults(&cfg);
    set_ok(&cfg, "share_scope", "credential");
    assert_int_equal(cfg.share_scope, JG_SHARE_CREDENTIAL);
    set_ok(&cfg, "share_scope", "org");
    assert_int_equal(cfg.share_scope, JG_SHARE_ORG);
    set_fails("share_scope", "Org");
    set_fails("share_scope", "orgs");
    set_fails("share_scope", "");

    for (i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        set_ok(&cfg, "log_level", levels[i].value);
        assert_int_equal(cfg.log_level, levels[i].level);
    }
    set_fails("log_level", "trace");
    set_fails("log_level", "INFO");
    set_fails("log_level", "");
}

static void
test_statuses_values(void **state)
{
    char many[512];
    char long_name[64];
    struct jg_config cfg;
    size_t used = 0;
    int i;

    (void)state;
    jg_config_defaults(&cfg);
    set_ok(&cfg, "terminal_statuses", "done");
    assert_int_equal(cfg.terminal_statuses.count, 1);
    assert_string_equal(cfg.terminal_statuses.names[0], "done");

    set_ok(&cfg, "terminal_statuses", " a , b.c,\td-e_f ");
    assert_int_equal(cfg.terminal_statuses.count, 3);
    assert_string_equal(cfg.terminal_statuses.names[0], "a");
    assert_string_equal(cfg.terminal_statuses.names[1], "b.c");
    assert_string_equal(cfg.terminal_statuses.names[2], "d-e_f");

    set_fails("terminal_statuses", "");
    set_fails("terminal_statuses", ",");
    set_fails("terminal_statuses", "a,,b");
    set_fails("terminal_statuses", "a;b");
    set_fails("terminal_statuses", "a\"b");
    set_fails("terminal_statuses", "a#b");

    /* JG_MAX_STATUSES distinct names fit, one more does not. */
    for (i = 0; i < JG_MAX_STATUSES; i++)
        used += (size_t)snprintf(many + used, sizeof(many) - used, "%ss%d",
                                 i == 0 ? "" : ",", i);
    set_ok(&cfg, "terminal_statuses", many);
    assert_int_equal(cfg.terminal_statuses.count, JG_MAX_STATUSES);
    snprintf(many + used, sizeof(many) - used, ",extra");
    set_fails("terminal_statuses", many);

    memset(long_name, 'n', sizeof(long_name));
    long_name[JG_MAX_STATUS_LEN - 1] = '\0';
    set_ok(&cfg, "terminal_statuses", long_name);
    assert_int_equal(strlen(cfg.terminal_statuses.names[0]),
                     JG_MAX_STATUS_LEN - 1);
    long_name[JG_MAX_STATUS_LEN - 1] = 'n';
    long_name[JG_MAX_STATUS_LEN] = '\0';
    set_fails("terminal_statuses", long_name);
}

static void
test_error_names_origin_key_value(void **state)
{
    struct jg_config cfg;
    char expected[1024];
    char path[64];
    char err[1024] = "";

    (void)state;
    jg_config_defaults(&cfg);
    assert_int_equal(load_text_at(&cfg,
                                  "# comment\n"
                                  "listen = 127.0.0.1:9000\n"
                                  "auth_ttl = -5\n",
                                  err, sizeof(err), path), -1);
    snprintf(expected, sizeof(expected),
             "%s:3: key \"auth_ttl\": invalid value \"-5\": expected a "
             "duration in seconds from 1 to 86400, optionally with suffix "
             "s, m, h or d", path);
    assert_string_equal(err, expected);

    /* Control bytes and quotes in the value are escaped, not printed raw. */
    assert_int_equal(jg_config_set(&cfg, "cache_dir", "a\"b\x01", "flag "
                                   "--cache_dir", err, sizeof(err)), -1);
    assert_contains(err, "flag --cache_dir: key \"cache_dir\": invalid value "
                         "\"a\\\"b\\x01\": expected a non-empty path");

    assert_int_equal(jg_config_set(&cfg, "admin_listen", "nowhere", "test",
                                   err, sizeof(err)), -1);
    assert_contains(err, "expected host:port, [IPv6]:port or "
                         "unix:/absolute/path, or an empty value to disable");
    assert_int_equal(jg_config_set(&cfg, "share_scope", "all", "test", err,
                                   sizeof(err)), -1);
    assert_contains(err, "expected one of org, credential");
    assert_int_equal(jg_config_set(&cfg, "max_body_bytes", "0", "test", err,
                                   sizeof(err)), -1);
    assert_contains(err, "expected a size in bytes from 1 to 67108864");
    assert_int_equal(jg_config_set(&cfg, "drain_timeout_ms", "x", "test", err,
                                   sizeof(err)), -1);
    assert_contains(err, "expected a duration in milliseconds from 0 to "
                         "3600000");

    /* A very long value is cut in the message, which stays bounded. */
    {
        char long_value[2000];

        memset(long_value, '9', sizeof(long_value));
        long_value[sizeof(long_value) - 1] = '\0';
        assert_int_equal(jg_config_set(&cfg, "auth_ttl", long_value, "test",
                                       err, sizeof(err)), -1);
        assert_contains(err, "999...\": expected");
    }

    /* The lines before the bad one were applied. */
    assert_string_equal(cfg.listen, "127.0.0.1:9000");
    assert_int_equal(cfg.auth_ttl_s, 60);
}

static void
test_file_syntax_errors(void **state)
{
    static const struct {
        const char *text;
        const char *line;
        const char *message;
    } cases[] = {
        {"listen = 127.0.0.1:1\nauth_ttl 5\n", ":2: ",
         "missing \"=\" in \"auth_ttl 5\": expected key = value"},
        {"  = 5\n", ":1: ", "empty key in \"= 5\": expected key = value"},
        {"\n\nlisen = 127.0.0.1:1\n", ":3: ", "unknown key \"lisen\""},
        {"Listen = 127.0.0.1:1\n", ":1: ", "unknown key \"Listen\""},
        {"cache_dir = \"/tmp/x\n", ":1: ",
         "key \"cache_dir\": missing closing double quote"},
        {"cache_dir = \"/tmp/x\" y\n", ":1: ",
         "key \"cache_dir\": text after the closing double quote"},
        {"cache_dir = \"/tmp/x\"# c\n", ":1: ",
         "key \"cache_dir\": text after the closing double quote"},
        {"auth_ttl = 5 6\n", ":1: ",
         "key \"auth_ttl\": invalid value \"5 6\""},
        {"auth_ttl = \n", ":1: ", "key \"auth_ttl\": invalid value \"\""},
    };
    struct jg_config cfg;
    char expected[128];
    char path[64];
    char err[1024];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        jg_config_defaults(&cfg);
        err[0] = '\0';
        if (load_text_at(&cfg, cases[i].text, err, sizeof(err), path) == 0)
            fail_msg("accepted: %s", cases[i].text);
        snprintf(expected, sizeof(expected), "%s%s", path, cases[i].line);
        assert_contains(err, expected);
        assert_contains(err, cases[i].message);
    }

    jg_config_defaults(&cfg);
    assert_int_equal(jg_config_load_file(&cfg, "/nonexistent/jobgate.conf",
                                         err, sizeof(err)), -1);
    assert_contains(err, "/nonexistent/jobgate.conf: cannot open config "
                         "file: No such file or directory");
}

static void
test_file_nul_and_long_line(void **state)
{
    static const char with_nul[] = "listen = 127.0.0.1:1\nauth_ttl = 5\0x\n";
    char text[8192];
    struct jg_config cfg;
    char path[64];
    char err[1024];

    (void)state;
    jg_config_defaults(&cfg);
    write_temp_file(with_nul, sizeof(with_nul) - 1, path);
    assert_int_equal(jg_config_load_file(&cfg, path, err, sizeof(err)), -1);
    unlink(path);
    assert_contains(err, ":2: NUL byte in line");

    /* A 4095-byte comment line is read whole, a 4096-byte one is not. */
    memset(text, 0, sizeof(text));
    text[0] = '#';
    memset(text + 1, 'c', 4094);
    memcpy(text + 4095, "\nauth_ttl = 7\n", 14);
    assert_int_equal(load_text(&cfg, text, err, sizeof(err)), 0);
    assert_int_equal(cfg.auth_ttl_s, 7);

    memset(text, 0, sizeof(text));
    text[0] = '#';
    memset(text + 1, 'c', 4095);
    memcpy(text + 4096, "\nauth_ttl = 8\n", 14);
    assert_int_equal(load_text_at(&cfg, text, err, sizeof(err), path), -1);
    assert_contains(err, ":1: line longer than 4095 bytes");
}

static void
test_duplicate_key_in_file(void **state)
{
    struct jg_config cfg;
    char expected[256];
    char path[64];
    char err[1024];

    (void)state;
    jg_config_defaults(&cfg);
    assert_int_equal(load_text_at(&cfg,
                                  "# header\n"
                                  "auth_ttl = 30\n"
                                  "listen = 127.0.0.1:1\n"
                                  "auth_ttl = 40\n",
                                  err, sizeof(err), path), -1);
    snprintf(expected, sizeof(expected),
             "%s:4: key \"auth_ttl\": duplicate value \"40\": expected each "
             "key once per file, first set on line 2", path);
    assert_string_equal(err, expected);
    assert_int_equal(cfg.auth_ttl_s, 30);

    /* A later layer may still override the file. */
    set_ok(&cfg, "auth_ttl", "50");
    assert_int_equal(cfg.auth_ttl_s, 50);
}

static void
test_quotes_and_comments(void **state)
{
    struct jg_config cfg;
    char err[1024] = "";

    (void)state;
    jg_config_defaults(&cfg);
    if (load_text(&cfg,
                  "# full-line comment\n"
                  "   # indented comment\n"
                  "\n"
                  "\t \n"
                  "listen = 127.0.0.1:9000   # after the value\n"
                  "upstream=http://127.0.0.1:9001/base/\t# tab first\n"
                  "admin_listen = \"\"\n"
                  "cache_dir = \"/srv/my cache # 1\"  # quoted '#'\n"
                  "terminal_statuses = \"done, gone\"\n"
                  "log_level = debug\r\n"
                  "  auth_ttl   =   90s  \n"
                  "max_headers = 7#no blank before the hash\n",
                  err, sizeof(err)) == 0)
        fail_msg("a '#' without a blank before it is not a comment, so "
                 "max_headers must be rejected");
    assert_contains(err, ":12: key \"max_headers\": invalid value "
                         "\"7#no blank before the hash\"");

    assert_string_equal(cfg.listen, "127.0.0.1:9000");
    assert_string_equal(cfg.upstream, "http://127.0.0.1:9001/base");
    assert_string_equal(cfg.admin_listen, "");
    assert_string_equal(cfg.cache_dir, "/srv/my cache # 1");
    assert_int_equal(cfg.terminal_statuses.count, 2);
    assert_string_equal(cfg.terminal_statuses.names[1], "gone");
    assert_int_equal(cfg.log_level, JG_LOG_DEBUG);
    assert_int_equal(cfg.auth_ttl_s, 90);

    /* Unquoted, a '#' inside a value is kept. */
    jg_config_defaults(&cfg);
    if (load_text(&cfg, "cache_dir = /srv/a#b\nadmin_listen =\n", err,
                  sizeof(err)) != 0)
        fail_msg("rejected: %s", err);
    assert_string_equal(cfg.cache_dir, "/srv/a#b");
    assert_string_equal(cfg.admin_listen, "");

    /* An empty file changes nothing. */
    jg_config_defaults(&cfg);
    assert_int_equal(load_text(&cfg, "", err, sizeof(err)), 0);
    assert_string_equal(cfg.listen, "127.0.0.1:8080");
}

static void
test_env_overrides_file(void **state)
{
    char *envp[] = {
        "PATH=/usr/bin",
        "JOBGATE_AUTH_TTL=120",
        "JOBGATEX_IGNORED=1",
        "JOBGATE_ADMIN_LISTEN=",
        "NOEQUALS",
        "JOBGATE_TERMINAL_STATUSES=completed",
        "JOBGATE_CACHE_MAX_BYTES=2g",
        NULL,
    };
    struct jg_config cfg;
    char err[1024] = "";

    (void)state;
    jg_config_defaults(&cfg);
    assert_int_equal(load_text(&cfg, "auth_ttl = 30\nlisten = [::1]:9000\n",
                               err, sizeof(err)), 0);
    if (jg_config_load_env(&cfg, envp, err, sizeof(err)) != 0)
        fail_msg("environment rejected: %s", err);

    assert_int_equal(cfg.auth_ttl_s, 120);
    assert_string_equal(cfg.admin_listen, "");
    assert_int_equal(cfg.terminal_statuses.count, 1);
    assert_int_equal(cfg.cache_max_bytes, 2 * GIB);
    /* Keys without a variable keep the file's value. */
    assert_string_equal(cfg.listen, "[::1]:9000");
}

static void
test_env_unknown_and_bad(void **state)
{
    char *unknown[] = {"JOBGATE_AUTH_TLL=5", NULL};
    char *lower[] = {"JOBGATE_auth_ttl=5", NULL};
    char *bare[] = {"JOBGATE_=5", NULL};
    char *bad_value[] = {"JOBGATE_AUTH_TTL=5", "JOBGATE_MAX_HEADERS=many",
                         NULL};
    struct jg_config cfg;
    char err[1024];

    (void)state;
    jg_config_defaults(&cfg);
    assert_int_equal(jg_config_load_env(&cfg, unknown, err, sizeof(err)), -1);
    assert_string_equal(err, "environment JOBGATE_AUTH_TLL: unknown variable: "
                        "expected JOBGATE_ followed by a key name in upper "
                        "case, such as JOBGATE_AUTH_TTL");
    assert_int_equal(jg_config_load_env(&cfg, lower, err, sizeof(err)), -1);
    assert_contains(err, "environment JOBGATE_auth_ttl: unknown variable");
    assert_int_equal(jg_config_load_env(&cfg, bare, err, sizeof(err)), -1);
    assert_contains(err, "environment JOBGATE_: unknown variable");

    assert_int_equal(jg_config_load_env(&cfg, bad_value, err, sizeof(err)),
                     -1);
    assert_string_equal(err, "environment JOBGATE_MAX_HEADERS: key "
                        "\"max_headers\": invalid value \"many\": expected an "
                        "integer from 1 to 10000 (header fields)");
    assert_int_equal(cfg.max_headers, 100);
}

static void
test_check_cross_field(void **state)
{
    struct jg_config cfg;
    char err[1024];

    (void)state;
    jg_config_defaults(&cfg);
    set_ok(&cfg, "admin_listen", "127.0.0.1:8080");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "keys \"listen\" and \"admin_listen\" both have "
                         "value \"127.0.0.1:8080\"");

    jg_config_defaults(&cfg);
    set_ok(&cfg, "listen", "unix:/run/jg.sock");
    set_ok(&cfg, "admin_listen", "unix:/run/jg.sock");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), -1);

    /* Port 0 binds a different free port each time, so both may use it. */
    jg_config_defaults(&cfg);
    set_ok(&cfg, "listen", "127.0.0.1:0");
    set_ok(&cfg, "admin_listen", "127.0.0.1:0");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), 0);
    set_ok(&cfg, "admin_listen", "");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), 0);

    jg_config_defaults(&cfg);
    set_ok(&cfg, "upstream_connect_timeout_ms", "20s");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "key \"upstream_connect_timeout_ms\": value 20000 "
                         "exceeds upstream_timeout_ms 10000");
    set_ok(&cfg, "upstream_timeout_ms", "20s");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), 0);

    jg_config_defaults(&cfg);
    set_ok(&cfg, "max_body_bytes", "32m");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "key \"max_body_bytes\": value 33554432 exceeds "
                         "max_passthrough_bytes 16777216");

    jg_config_defaults(&cfg);
    set_ok(&cfg, "max_body_bytes", "2m");
    set_ok(&cfg, "cache_max_bytes", "1m");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "exceeds cache_max_bytes 1048576");

    /* Each worker has a share of both connection limits, at least one. */
    jg_config_defaults(&cfg);
    set_ok(&cfg, "workers", "4");
    set_ok(&cfg, "upstream_max_connections", "4");
    set_ok(&cfg, "max_connections", "4");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), 0);
    set_ok(&cfg, "upstream_max_connections", "3");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "key \"upstream_max_connections\": value 3 is "
                         "below workers 4");
    set_ok(&cfg, "upstream_max_connections", "4");
    set_ok(&cfg, "max_connections", "3");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "key \"max_connections\": value 3 is below "
                         "workers 4");

    /* A struct filled by hand is checked too. */
    jg_config_defaults(&cfg);
    snprintf(cfg.upstream, sizeof(cfg.upstream), "ftp://example.org");
    assert_int_equal(jg_config_check(&cfg, err, sizeof(err)), -1);
    assert_contains(err, "key \"upstream\": invalid value "
                         "\"ftp://example.org\"");
}

/* Dump cfg to a file and load it back over a fresh default config. */
static void
assert_dump_round_trip(const struct jg_config *cfg)
{
    struct jg_config loaded;
    char path[64];
    char err[1024] = "";
    FILE *f;
    int fd;

    snprintf(path, sizeof(path), "/tmp/jg-test-dump-XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    jg_config_dump(cfg, f);
    assert_int_equal(fclose(f), 0);

    jg_config_defaults(&loaded);
    if (jg_config_load_file(&loaded, path, err, sizeof(err)) != 0)
        fail_msg("dump does not load back: %s", err);
    unlink(path);
    assert_config_equal(&loaded, cfg);
}

static void
test_dump_round_trip(void **state)
{
    struct jg_config cfg;
    char *text = NULL;
    size_t len = 0;
    FILE *mem;

    (void)state;
    jg_config_defaults(&cfg);
    assert_dump_round_trip(&cfg);

    set_ok(&cfg, "listen", "[::1]:9000");
    set_ok(&cfg, "admin_listen", "");
    set_ok(&cfg, "upstream", "http://127.0.0.1:9001/prefix/");
    set_ok(&cfg, "cache_dir", "/srv/jobgate cache #1");
    set_ok(&cfg, "terminal_statuses", "done , gone");
    set_ok(&cfg, "terminal_ttl", "0");
    set_ok(&cfg, "cache_max_bytes", "3g");
    set_ok(&cfg, "auth_ttl", "2h");
    set_ok(&cfg, "share_scope", "credential");
    set_ok(&cfg, "upstream_timeout_ms", "3s");
    set_ok(&cfg, "max_request_body_bytes", "0");
    set_ok(&cfg, "log_level", "error");
    assert_dump_round_trip(&cfg);

    mem = open_memstream(&text, &len);
    assert_non_null(mem);
    jg_config_dump(&cfg, mem);
    assert_int_equal(fclose(mem), 0);
    assert_contains(text, "listen = [::1]:9000\n");
    assert_contains(text, "admin_listen = \"\"\n");
    assert_contains(text, "upstream = http://127.0.0.1:9001/prefix\n");
    assert_contains(text, "cache_dir = \"/srv/jobgate cache #1\"\n");
    assert_contains(text, "terminal_statuses = done,gone\n");
    assert_contains(text, "auth_ttl = 7200\n");
    assert_contains(text, "cache_max_bytes = 3221225472\n");
    assert_contains(text, "share_scope = credential\n");
    assert_contains(text, "log_level = error\n");
    free(text);
}

/* Open the shipped sample config of the source tree. */
static FILE *
open_sample(char *path, size_t pathlen)
{
    const char *source_dir = getenv("JOBGATE_SOURCE_DIR");
    FILE *f;

    if (source_dir != NULL && source_dir[0] != '\0')
        snprintf(path, pathlen, "%s/config/jobgate.conf", source_dir);
    else
        snprintf(path, pathlen, "../config/jobgate.conf");
    f = fopen(path, "r");
    if (f == NULL)
        fail_msg("cannot open %s: set JOBGATE_SOURCE_DIR to the source tree",
                 path);
    return f;
}

/* Cut the next line out of *cursor, or return NULL at the end of text. */
static char *
next_line(char **cursor)
{
    char *line = *cursor;
    char *newline;

    if (line == NULL || *line == '\0')
        return NULL;
    newline = strchr(line, '\n');
    if (newline != NULL) {
        *newline = '\0';
        *cursor = newline + 1;
    } else {
        *cursor = line + strlen(line);
    }
    return line;
}

static char *
dump_to_string(const struct jg_config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);

    assert_non_null(mem);
    jg_config_dump(cfg, mem);
    assert_int_equal(fclose(mem), 0);
    return text;
}

/*
 * Load the sample over a config in which every key has a non-default
 * value: the result equals the defaults only if the sample sets every key
 * to its default.
 */
static void
test_sample_file_equals_defaults(void **state)
{
    static const struct {
        const char *key;
        const char *value;
    } others[] = {
        {"listen", "127.0.0.1:9999"},
        {"admin_listen", ""},
        {"upstream", "http://127.0.0.1:1"},
        {"cache_dir", "/tmp/other"},
        {"terminal_statuses", "done"},
        {"terminal_ttl", "1"},
        {"cache_max_bytes", "2m"},
        {"auth_ttl", "2"},
        {"share_scope", "credential"},
        {"workers", "2"},
        {"upstream_timeout_ms", "5"},
        {"upstream_connect_timeout_ms", "5"},
        {"upstream_max_connections", "2"},
        {"max_body_bytes", "2"},
        {"max_passthrough_bytes", "3"},
        {"max_request_body_bytes", "4"},
        {"client_header_timeout_ms", "5"},
        {"client_timeout_ms", "6"},
        {"max_header_bytes", "2k"},
        {"max_headers", "7"},
        {"max_uri_bytes", "100"},
        {"max_connections", "8"},
        {"max_principals", "9"},
        {"max_waiters", "10"},
        {"drain_timeout_ms", "0"},
        {"log_level", "debug"},
    };
    struct jg_config defaults;
    struct jg_config cfg;
    char *default_text;
    char *other_text;
    char *d_cursor;
    char *o_cursor;
    char *d_line;
    char *o_line;
    char path[1024];
    char err[1024] = "";
    size_t lines = 0;
    size_t i;

    (void)state;
    jg_config_defaults(&defaults);
    jg_config_defaults(&cfg);
    for (i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        set_ok(&cfg, others[i].key, others[i].value);

    /* Every dumped line differs, so the list above covers every key. */
    default_text = dump_to_string(&defaults);
    other_text = dump_to_string(&cfg);
    d_cursor = default_text;
    o_cursor = other_text;
    d_line = next_line(&d_cursor);
    o_line = next_line(&o_cursor);
    while (d_line != NULL && o_line != NULL) {
        if (strcmp(d_line, o_line) == 0)
            fail_msg("key not covered by this test: %s", d_line);
        lines++;
        d_line = next_line(&d_cursor);
        o_line = next_line(&o_cursor);
    }
    assert_null(d_line);
    assert_null(o_line);
    assert_int_equal(lines, sizeof(others) / sizeof(others[0]));
    free(default_text);
    free(other_text);

    fclose(open_sample(path, sizeof(path)));
    if (jg_config_load_file(&cfg, path, err, sizeof(err)) != 0)
        fail_msg("sample does not load: %s", err);
    assert_config_equal(&cfg, &defaults);
    if (jg_config_check(&cfg, err, sizeof(err)) != 0)
        fail_msg("sample fails the check: %s", err);
}

/* Each key line of the sample follows a "# Default: <value>" comment that
 * names the same value. */
static void
test_sample_documents_defaults(void **state)
{
    struct jg_config cfg;
    char line[4096];
    char documented[256] = "";
    char path[1024];
    char *dump;
    char *cursor;
    size_t dump_lines = 0;
    size_t keys = 0;
    FILE *f;

    (void)state;
    jg_config_defaults(&cfg);
    dump = dump_to_string(&cfg);
    cursor = dump;
    while (next_line(&cursor) != NULL)
        dump_lines++;
    free(dump);

    f = open_sample(path, sizeof(path));
    while (fgets(line, sizeof(line), f) != NULL) {
        char *equals;
        char *value;

        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "# Default: ", 11) == 0) {
            snprintf(documented, sizeof(documented), "%.*s",
                     (int)strcspn(line + 11, " "), line + 11);
            continue;
        }
        if (line[0] == '#' || line[0] == '\0')
            continue;

        equals = strstr(line, " = ");
        if (equals == NULL)
            fail_msg("%s: unexpected line \"%s\"", path, line);
        value = equals + 3;
        if (strcmp(value, documented) != 0)
            fail_msg("%s: \"%s\" follows \"# Default: %s\"", path, line,
                     documented);
        documented[0] = '\0';
        keys++;
    }
    fclose(f);
    assert_int_equal(keys, dump_lines);
}

static void
test_usage_lists_every_key(void **state)
{
    struct jg_config cfg;
    char *text = NULL;
    char *dump;
    char *cursor;
    char *line;
    size_t len = 0;
    FILE *mem;

    (void)state;
    mem = open_memstream(&text, &len);
    assert_non_null(mem);
    jg_config_usage(mem);
    assert_int_equal(fclose(mem), 0);

    jg_config_defaults(&cfg);
    dump = dump_to_string(&cfg);
    cursor = dump;
    while ((line = next_line(&cursor)) != NULL) {
        char entry[256];
        char *value = strstr(line, " = ");

        assert_non_null(value);
        *value = '\0';
        snprintf(entry, sizeof(entry), "  %s (default \"", line);
        assert_contains(text, entry);
    }
    assert_contains(text, "auth_ttl (default \"60\")\n      seconds an "
                          "upstream 200 proves");
    assert_contains(text, "Value: a duration in seconds from 1 to 86400");
    free(dump);
    free(text);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_values),
        cmocka_unit_test(test_defaults_pass_check),
        cmocka_unit_test(test_listen_values),
        cmocka_unit_test(test_upstream_values),
        cmocka_unit_test(test_cache_dir_values),
        cmocka_unit_test(test_integer_bounds),
        cmocka_unit_test(test_seconds_with_suffixes),
        cmocka_unit_test(test_milliseconds_with_suffixes),
        cmocka_unit_test(test_sizes_with_suffixes),
        cmocka_unit_test(test_number_overflow),
        cmocka_unit_test(test_enum_and_log_level),
        cmocka_unit_test(test_statuses_values),
        cmocka_unit_test(test_error_names_origin_key_value),
        cmocka_unit_test(test_file_syntax_errors),
        cmocka_unit_test(test_file_nul_and_long_line),
        cmocka_unit_test(test_duplicate_key_in_file),
        cmocka_unit_test(test_quotes_and_comments),
        cmocka_unit_test(test_env_overrides_file),
        cmocka_unit_test(test_env_unknown_and_bad),
        cmocka_unit_test(test_check_cross_field),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_sample_file_equals_defaults),
        cmocka_unit_test(test_sample_documents_defaults),
        cmocka_unit_test(test_usage_lists_every_key),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
