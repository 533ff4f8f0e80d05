/*
 * Fuzz target for the config file reader. The input is the content of a
 * config file, loaded over the built-in defaults. jg_config_load_file()
 * reads only from a path, so the input goes into a memfd that is opened
 * again through /proc/self/fd, and no file is written to disk.
 *
 * Any input may be rejected, but a rejection must come with a message that
 * starts with the file's path. An accepted file must give an effective
 * configuration that jg_config_dump() writes as a file which loads, over
 * fresh defaults, to a configuration that dumps to the same text.
 */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "jobgate/jg_config.h"
#include "jobgate/jg_util.h"

/* "/proc/self/fd/" and a decimal int with its NUL. */
#define FD_PATH_MAX 32
#define ERR_MAX 1024

/* A memfd holding data[0..len); its path goes into path. */
static int
memfd_with(const char *data, size_t len, char path[FD_PATH_MAX])
{
    int fd = memfd_create("jobgate-fuzz-config", MFD_CLOEXEC);
    size_t done = 0;

    FUZZ_CHECK(fd >= 0);
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);

        FUZZ_CHECK(n > 0);
        done += (size_t)n;
    }
    snprintf(path, FD_PATH_MAX, "/proc/self/fd/%d", fd);
    return fd;
}

/*
 * Load data[0..len) as a config file over cfg. Returns the result of
 * jg_config_load_file() and checks the error message on failure.
 */
static int
load(struct jg_config *cfg, const char *data, size_t len, char *err)
{
    char path[FD_PATH_MAX];
    int fd = memfd_with(data, len, path);
    int rc;

    memset(err, 0x7f, ERR_MAX);
    rc = jg_config_load_file(cfg, path, err, ERR_MAX);
    close(fd);

    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc != 0) {
        FUZZ_CHECK(memchr(err, '\0', ERR_MAX) != NULL);
        FUZZ_CHECK(strncmp(err, path, strlen(path)) == 0);
    }
    return rc;
}

/* The text of jg_config_dump(cfg), owned by the caller. */
static char *
dump(const struct jg_config *cfg, size_t *len)
{
    char *text = NULL;
    FILE *f = open_memstream(&text, len);

    FUZZ_CHECK(f != NULL);
    jg_config_dump(cfg, f);
    FUZZ_CHECK(fclose(f) == 0);
    return text;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jg_config cfg;
    struct jg_config reloaded;
    char err[ERR_MAX];
    char *first;
    char *second;
    size_t first_len;
    size_t second_len;

    jg_config_defaults(&cfg);
    if (load(&cfg, (const char *)data, size, err) != 0)
        return 0;

    /* Accepted values may still conflict; that check must not crash. */
    (void)jg_config_check(&cfg, err, sizeof(err));

    first = dump(&cfg, &first_len);
    jg_config_defaults(&reloaded);
    if (load(&reloaded, first, first_len, err) != 0) {
        fprintf(stderr, "fuzz_config: the dump of an accepted config does "
                        "not load: %s\n", err);
        abort();
    }
    second = dump(&reloaded, &second_len);
    FUZZ_CHECK(second_len == first_len);
    FUZZ_CHECK(memcmp(first, second, first_len) == 0);

    free(first);
    free(second);
    return 0;
}
