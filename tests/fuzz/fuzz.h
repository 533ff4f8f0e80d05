/*
 * Shared by the fuzz targets and the replay driver: the libFuzzer entry
 * point, and an invariant check that aborts with the failed condition.
 * Aborting makes a broken invariant a crash both to libFuzzer, which then
 * saves the input, and to the ctest replay, which then fails. The check is
 * not assert(), because release builds define NDEBUG.
 */
#ifndef JOBGATE_TESTS_FUZZ_H
#define JOBGATE_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Run one input. Returns 0; a finding aborts the process instead. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                        \
            abort();                                                         \
        }                                                                    \
    } while (0)

#endif
