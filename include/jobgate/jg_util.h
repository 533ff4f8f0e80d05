/*
 * Memory and clock helpers shared by every module.
 *
 * Allocation failure is not recoverable in jobgate: the wrappers print a
 * message and abort, so callers never test their results for NULL.
 */
#ifndef JOBGATE_JG_UTIL_H
#define JOBGATE_JG_UTIL_H

#include <stddef.h>
#include <stdint.h>

void *jg_malloc(size_t size);
void *jg_calloc(size_t count, size_t size);
void *jg_realloc(void *ptr, size_t size);
/* Copy len bytes of s into a new NUL-terminated string owned by the caller. */
char *jg_strndup(const char *s, size_t len);
char *jg_strdup(const char *s);
void jg_free(void *ptr);

/* Milliseconds on the monotonic clock, for durations and deadlines. */
uint64_t jg_now_ms(void);
/* Seconds since the epoch on the wall clock, for stored-at times and Age. */
int64_t jg_wall_s(void);

/* Case-insensitive ASCII comparison of a counted string with a C string. */
int jg_ascii_casecmp_n(const char *a, size_t alen, const char *b);

#define JG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Counters that one thread writes (or several under one lock) and the
 * metrics page of another thread reads. Relaxed atomic loads and stores
 * keep that free of data races and compile to plain moves, so counting
 * costs no more than ++ on the hit path.
 */
#define JG_COUNT_ADD(c, n)                                                    \
    __atomic_store_n(&(c), __atomic_load_n(&(c), __ATOMIC_RELAXED) + (n),     \
                     __ATOMIC_RELAXED)
#define JG_COUNT_SUB(c, n)                                                    \
    __atomic_store_n(&(c), __atomic_load_n(&(c), __ATOMIC_RELAXED) - (n),     \
                     __ATOMIC_RELAXED)
#define JG_COUNT(c) JG_COUNT_ADD(c, 1)

/*
 * Add the n counters at from to those at sum, each read with a relaxed
 * atomic load: for summing the counter structs of several threads, which
 * hold nothing but uint64_t counters.
 */
void jg_counters_add(uint64_t *sum, const uint64_t *from, size_t n);

#endif
