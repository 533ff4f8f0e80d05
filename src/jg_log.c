/*
 * The logger: one line per event on stderr, "time level message". Lines
 * are written with a single write(2) so that lines from several threads do
 * not interleave.
 */
#include "jobgate/jg_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Set once at start, before any event loop or thread runs. */
static enum jg_log_level log_level = JG_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void
jg_log_set_level(enum jg_log_level level)
{
    log_level = level;
}

int
jg_log_enabled(enum jg_log_level level)
{
    return level <= log_level;
}

int
jg_log_level_parse(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0)
            return (int)i;
    }
    return -1;
}

const char *
jg_log_level_name(enum jg_log_level level)
{
    return level_names[level];
}

void
jg_log_write(enum jg_log_level level, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t len;
    int saved_errno = errno;
    int n;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    len = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    n = snprintf(line + len, sizeof(line) - len, ".%03ldZ %s ",
                 ts.tv_nsec / 1000000, level_names[level]);
    len += (size_t)n;

    va_start(ap, fmt);
    n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    len += (size_t)n;

    /* A line longer than the buffer is cut, and still ends the line. */
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    if (write(STDERR_FILENO, line, len) < 0) {
        /* Nowhere left to report a failing stderr. */
    }
    errno = saved_errno;
}
