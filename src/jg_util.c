/*
 * Allocation wrappers that abort on failure, and the two clocks jobgate
 * uses: monotonic milliseconds for deadlines, wall seconds for stored-at.
 */
#include "jobgate/jg_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void
out_of_memory(size_t size)
{
    fprintf(stderr, "jobgate: out of memory allocating %zu bytes\n", size);
    abort();
}

void *
jg_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);

    if (p == NULL)
        out_of_memory(size);
    return p;
}

void *
jg_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);

    if (p == NULL)
        out_of_memory(count * size);
    return p;
}

void *
jg_realloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);

    if (p == NULL)
        out_of_memory(size);
    return p;
}

char *
jg_strndup(const char *s, size_t len)
{
    char *p = jg_malloc(len + 1);

    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *
jg_strdup(const char *s)
{
    return jg_strndup(s, strlen(s));
}

void
jg_free(void *ptr)
{
    free(ptr);
}

uint64_t
jg_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int64_t
jg_wall_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

int
jg_ascii_casecmp_n(const char *a, size_t alen, const char *b)
{
    size_t i;

    for (i = 0; i < alen && b[i] != '\0'; i++) {
        int ca = (unsigned char)a[i];
        int cb = (unsigned char)b[i];

        if (ca >= 'A' && ca <= 'Z')
            ca += 'a' - 'A';
        if (cb >= 'A' && cb <= 'Z')
            cb += 'a' - 'A';
        if (ca != cb)
            return ca - cb;
    }
    if (i < alen)
        return 1;
    return b[i] == '\0' ? 0 : -1;
}

void
jg_counters_add(uint64_t *sum, const uint64_t *from, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        sum[i] += __atomic_load_n(&from[i], __ATOMIC_RELAXED);
}
