/*
 * A main() for the fuzz targets without libFuzzer, so that their seed
 * corpora and saved crash inputs run as ordinary tests with any compiler.
 * It calls LLVMFuzzerTestOneInput() once for each file named on the
 * command line and for each file in each directory named there, in name
 * order, skipping names that start with '.' (such as .gitkeep). Each input
 * is read into a heap buffer of exactly its size, as libFuzzer passes it,
 * so a sanitizer build catches reads past the end.
 *
 * A broken invariant aborts inside the target. A missing path, an
 * unreadable file, or no input at all is an error too, so that a wrong
 * path in the build cannot make the test pass without running anything.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "jobgate/jg_util.h"

/* Read the whole file at path into a new buffer of exactly its size. */
static int
read_file(const char *path, uint8_t **data, size_t *size)
{
    struct stat st;
    size_t done = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "replay: cannot read %s: %s\n", path,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }

    *size = (size_t)st.st_size;
    *data = jg_malloc(*size);
    while (done < *size) {
        ssize_t n = read(fd, *data + done, *size - done);

        if (n <= 0) {
            fprintf(stderr, "replay: reading %s failed or ended early\n",
                    path);
            jg_free(*data);
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    close(fd);
    return 0;
}

static int
replay_file(const char *path)
{
    uint8_t *data;
    size_t size;

    if (read_file(path, &data, &size) != 0)
        return -1;
    /* Printed first, so that the name of an input that aborts is shown. */
    printf("replay: %s (%zu bytes)\n", path, size);
    fflush(stdout);
    LLVMFuzzerTestOneInput(data, size);
    jg_free(data);
    return 0;
}

static int
skip_hidden(const struct dirent *entry)
{
    return entry->d_name[0] != '.';
}

/* Replay every file of dir; *count grows by the number replayed. */
static int
replay_dir(const char *dir, size_t *count)
{
    struct dirent **entries;
    int n = scandir(dir, &entries, skip_hidden, alphasort);
    int rc = 0;
    int i;

    if (n < 0) {
        fprintf(stderr, "replay: cannot list %s: %s\n", dir, strerror(errno));
        return -1;
    }

    for (i = 0; i < n; i++) {
        size_t len = strlen(dir) + strlen(entries[i]->d_name) + 2;
        char *path = jg_malloc(len);

        snprintf(path, len, "%s/%s", dir, entries[i]->d_name);
        if (rc == 0 && replay_file(path) != 0)
            rc = -1;
        else if (rc == 0)
            (*count)++;
        jg_free(path);
        free(entries[i]);
    }
    free(entries);
    return rc;
}

int
main(int argc, char **argv)
{
    size_t count = 0;
    struct stat st;
    int i;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
        return 2;
    }

    for (i = 1; i < argc; i++) {
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if (S_ISDIR(st.st_mode) ? replay_dir(argv[i], &count) != 0
                                : replay_file(argv[i]) != 0)
            return 1;
        if (!S_ISDIR(st.st_mode))
            count++;
    }

    if (count == 0) {
        fprintf(stderr, "replay: no input files found\n");
        return 1;
    }
    printf("replay: %zu inputs passed\n", count);
    return 0;
}
