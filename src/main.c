/*
 * jobgate's entry point: read the configuration from its three layers
 * (file, environment, flags), then run the server in the foreground until
 * SIGTERM or SIGINT ends a drain.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobgate/jg_config.h"
#include "jobgate/jg_log.h"
#include "jobgate/jg_server.h"

extern char **environ;

static void
usage(FILE *out)
{
    fprintf(out,
            "usage: jobgate [-t] [-T] [-c FILE] [--KEY=VALUE ...]\n"
            "\n"
            "  -c FILE       read the configuration file FILE; without it,\n"
            "                the built-in defaults apply\n"
            "  -t            check the configuration and exit\n"
            "  -T            check, print the effective configuration, exit\n"
            "  --KEY=VALUE   set a configuration key, overriding the file\n"
            "                and the JOBGATE_KEY environment variables\n"
            "  -h            show this help\n"
            "\n"
            "configuration keys:\n");
    jg_config_usage(out);
}

struct options {
    const char *config_path;
    bool check_only;
    bool dump;
};

/* Apply --key=value flags; other arguments were handled by the caller. */
static int
apply_flag(struct jg_config *cfg, const char *arg)
{
    char key[128];
    char origin[160];
    char err[1024];
    const char *eq = strchr(arg + 2, '=');
    size_t len;

    if (eq == NULL) {
        fprintf(stderr, "jobgate: flag %s: expected --KEY=VALUE\n", arg);
        return -1;
    }
    len = (size_t)(eq - (arg + 2));
    if (len == 0 || len >= sizeof(key)) {
        fprintf(stderr, "jobgate: flag %s: invalid key\n", arg);
        return -1;
    }
    memcpy(key, arg + 2, len);
    key[len] = '\0';
    snprintf(origin, sizeof(origin), "flag --%s", key);
    if (jg_config_set(cfg, key, eq + 1, origin, err, sizeof(err)) != 0) {
        fprintf(stderr, "jobgate: %s\n", err);
        return -1;
    }
    return 0;
}

static int
parse_options(int argc, char **argv, struct options *opts)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (strcmp(a, "-c") == 0 && i + 1 < argc) {
            opts->config_path = argv[++i];
        } else if (strcmp(a, "-t") == 0) {
            opts->check_only = true;
        } else if (strcmp(a, "-T") == 0) {
            opts->check_only = true;
            opts->dump = true;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "jobgate: unknown argument \"%s\"\n", a);
            usage(stderr);
            return -1;
        }
    }
    return 0;
}

/* Build the effective configuration. Returns 0 or -1 after printing why. */
static int
load_config(struct jg_config *cfg, int argc, char **argv,
            const struct options *opts)
{
    char err[1024];
    int i;

    jg_config_defaults(cfg);
    if (opts->config_path != NULL &&
        jg_config_load_file(cfg, opts->config_path, err, sizeof(err)) != 0)
        goto fail;
    if (jg_config_load_env(cfg, environ, err, sizeof(err)) != 0)
        goto fail;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0)
            i++;
        else if (strncmp(argv[i], "--", 2) == 0 &&
                 strcmp(argv[i], "--help") != 0 &&
                 apply_flag(cfg, argv[i]) != 0)
            return -1;
    }
    if (jg_config_check(cfg, err, sizeof(err)) != 0)
        goto fail;
    return 0;

fail:
    fprintf(stderr, "jobgate: %s\n", err);
    return -1;
}

int
main(int argc, char **argv)
{
    struct options opts = {0};
    struct jg_config cfg;
    struct jg_server srv;
    int status;

    if (parse_options(argc, argv, &opts) != 0)
        return 2;
    if (load_config(&cfg, argc, argv, &opts) != 0)
        return 1;
    if (opts.check_only) {
        if (opts.dump)
            jg_config_dump(&cfg, stdout);
        fprintf(stderr, "jobgate: configuration ok\n");
        return 0;
    }

    jg_log_set_level(cfg.log_level);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        jg_log_error("libcurl initialisation failed");
        return 1;
    }
    jg_log_info("jobgate %s starting, upstream %s, cache %s", JOBGATE_VERSION,
                cfg.upstream, cfg.cache_dir);

    if (jg_server_init(&srv, &cfg) != 0) {
        jg_server_free(&srv);
        curl_global_cleanup();
        return 1;
    }
    status = jg_server_run(&srv);
    jg_server_free(&srv);
    curl_global_cleanup();
    jg_log_info("stopped");
    return status;
}
