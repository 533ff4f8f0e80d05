/*
 * Leveled logging to stderr, one line per event.
 *
 * The level is set once at start, before any event loop runs, and only read
 * afterwards. A credential never reaches a log line: callers log at most the
 * short fingerprint from jg_principals_fingerprint().
 */
#ifndef JOBGATE_JG_LOG_H
#define JOBGATE_JG_LOG_H

enum jg_log_level {
    JG_LOG_ERROR = 0,
    JG_LOG_WARN,
    JG_LOG_INFO,
    JG_LOG_DEBUG,
};

void jg_log_set_level(enum jg_log_level level);
int jg_log_enabled(enum jg_log_level level);

/* Parse "error", "warn", "info" or "debug"; returns -1 for anything else. */
int jg_log_level_parse(const char *name);
const char *jg_log_level_name(enum jg_log_level level);

/* Write one line; errno is preserved across the call. */
void jg_log_write(enum jg_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The level test comes first so that disabled lines cost no formatting. */
#define jg_log(level, ...)                                                     \
    do {                                                                       \
        if (jg_log_enabled(level))                                             \
            jg_log_write(level, __VA_ARGS__);                                  \
    } while (0)

#define jg_log_error(...) jg_log(JG_LOG_ERROR, __VA_ARGS__)
#define jg_log_warn(...)  jg_log(JG_LOG_WARN, __VA_ARGS__)
#define jg_log_info(...)  jg_log(JG_LOG_INFO, __VA_ARGS__)
#define jg_log_debug(...) jg_log(JG_LOG_DEBUG, __VA_ARGS__)

#endif
