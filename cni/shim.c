/*
 * The weft CNI executable's compiled fast path: hand the request to the node
 * agent and relay its answer. It does what shim.py's main() does, in a static
 * binary that starts in a fraction of a millisecond where an interpreter
 * needs ~6 ms of CPU per pod. The wire protocol is the one shim.py documents:
 *
 *   request  "weft/1 <plugin> <len(env)>\n" + env + stdin, then shutdown(SHUT_WR);
 *            env is the CNI_* variables as "NAME=VALUE" joined by NUL bytes.
 *   reply    "<exit code>\n" + stdout.
 *
 * The plugin is the name it runs as ("weft-ipam" or "weft"). When no agent
 * listens on the socket, or the config's `socket` is not a plain string, it
 * execs the Python launcher <its own directory>/.weft/<plugin> with the same
 * stdin (from a memfd), which does the work in-process and reports bad input.
 *
 * Built by weft.agent.native at install time; never committed as a binary.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/weft/cni.sock"
#define RETRY_CODE 11
#define RETRY_MESSAGE "{\"cniVersion\": \"1.1.0\", \"code\": 11, \"msg\": \"the weft agent " \
    "closed the connection\", \"details\": \"try again; see the weft-node agent log\"}\n"

extern char **environ;

struct buffer {
    char *data;
    size_t len, cap;
};

static void append(struct buffer *buf, const void *data, size_t len) {
    if (buf->len + len > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 4096;
        while (cap < buf->len + len)
            cap *= 2;
        buf->data = realloc(buf->data, cap);
        if (!buf->data)
            _exit(RETRY_CODE);
        buf->cap = cap;
    }
    memcpy(buf->data + buf->len, data, len);
    buf->len += len;
}

static int read_all(int fd, struct buffer *buf) {
    char chunk[65536];
    for (;;) {
        ssize_t got = read(fd, chunk, sizeof chunk);
        if (got == 0)
            return 0;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        append(buf, chunk, (size_t)got);
    }
}

static int write_all(int fd, const char *data, size_t len, int flags) {
    while (len > 0) {
        ssize_t put = flags ? send(fd, data, len, flags) : write(fd, data, len);
        if (put < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += put;
        len -= (size_t)put;
    }
    return 0;
}

static const char *skip_space(const char *at, const char *end) {
    while (at < end && (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r'))
        at++;
    return at;
}

/* The config's "socket" value, found as shim.py's socket_path() finds it: the
 * default when the key is absent, NULL when the value is not a plain string. */
static int socket_path(const struct buffer *conf, char *out, size_t size) {
    static const char key[] = "\"socket\"";
    const char *end = conf->data + conf->len;
    const char *at = conf->len ? memmem(conf->data, conf->len, key, sizeof key - 1) : NULL;
    if (!at) {
        snprintf(out, size, "%s", DEFAULT_SOCKET);
        return 0;
    }
    at = skip_space(at + sizeof key - 1, end);
    if (at >= end || *at != ':')
        return -1;
    at = skip_space(at + 1, end);
    if (at >= end || *at != '"')
        return -1;
    const char *close = memchr(at + 1, '"', (size_t)(end - at - 1));
    if (!close || memchr(at + 1, '\\', (size_t)(close - at - 1)) || (size_t)(close - at - 1) >= size)
        return -1;
    memcpy(out, at + 1, (size_t)(close - at - 1));
    out[close - at - 1] = '\0';
    return 0;
}

static void encode_request(struct buffer *req, const char *plugin, const struct buffer *conf) {
    struct buffer env = {0};
    for (char **var = environ; *var; var++) {
        if (strncmp(*var, "CNI_", 4) != 0)
            continue;
        if (env.len)
            append(&env, "", 1);
        append(&env, *var, strlen(*var));
    }
    char header[64];
    int len = snprintf(header, sizeof header, "weft/1 %s %zu\n", plugin, env.len);
    append(req, header, (size_t)len);
    if (env.len)
        append(req, env.data, env.len);
    if (conf->len)
        append(req, conf->data, conf->len);
    free(env.data);
}

/* -1 when nothing listens on `path`, else the connected socket. */
static int connect_agent(const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        return -1;
    strcpy(addr.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -1;
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(sock);
        return -1;
    }
    return sock;
}

static void relay(int code, const char *out, size_t len) {
    write_all(STDOUT_FILENO, out, len, 0);
    _exit(code);
}

/* Hand the request to the agent and relay its answer; returns only when no agent listens. */
static void ask_agent(const char *path, const struct buffer *req) {
    int sock = connect_agent(path);
    if (sock < 0)
        return;
    struct buffer reply = {0};
    if (write_all(sock, req->data, req->len, MSG_NOSIGNAL) != 0 || shutdown(sock, SHUT_WR) != 0
        || read_all(sock, &reply) != 0)
        relay(RETRY_CODE, RETRY_MESSAGE, sizeof RETRY_MESSAGE - 1);
    char *newline = reply.len ? memchr(reply.data, '\n', reply.len) : NULL;
    if (!newline || newline == reply.data || newline - reply.data > 3)
        relay(RETRY_CODE, RETRY_MESSAGE, sizeof RETRY_MESSAGE - 1);
    int code = 0;
    for (char *digit = reply.data; digit < newline; digit++) {
        if (*digit < '0' || *digit > '9')
            relay(RETRY_CODE, RETRY_MESSAGE, sizeof RETRY_MESSAGE - 1);
        code = code * 10 + (*digit - '0');
    }
    relay(code, newline + 1, reply.len - (size_t)(newline + 1 - reply.data));
}

/* Exec the Python launcher beside this binary, with the stdin already read. */
static void run_in_process(const char *plugin, const struct buffer *conf) {
    char self[PATH_MAX], launcher[PATH_MAX + 64];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len < 0)
        len = 0;
    self[len] = '\0';
    char *slash = strrchr(self, '/');
    if (slash)
        *slash = '\0';
    snprintf(launcher, sizeof launcher, "%s/.weft/%s", self, plugin);
    int fd = memfd_create("weft-cni-stdin", 0);
    if (fd >= 0 && write_all(fd, conf->data, conf->len, 0) == 0
        && lseek(fd, 0, SEEK_SET) == 0 && dup2(fd, STDIN_FILENO) == STDIN_FILENO) {
        char *argv[] = {launcher, NULL};
        execve(launcher, argv, environ);
    }
    char message[PATH_MAX + 256];
    int n = snprintf(message, sizeof message,
                     "{\"cniVersion\": \"1.1.0\", \"code\": 100, \"msg\": \"no weft agent "
                     "answers and %s cannot run\", \"details\": \"%s; reinstall weft's CNI "
                     "binaries (weft install)\"}\n", launcher, strerror(errno));
    relay(1, message, (size_t)n);
}

int main(int argc, char **argv) {
    (void)argc;
    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    const char *plugin = strcmp(name, "weft-ipam") == 0 ? "weft-ipam" : "weft";
    struct buffer conf = {0};
    if (read_all(STDIN_FILENO, &conf) != 0)
        conf.len = 0;
    char path[sizeof ((struct sockaddr_un *)0)->sun_path];
    if (socket_path(&conf, path, sizeof path) == 0) {
        struct buffer req = {0};
        encode_request(&req, plugin, &conf);
        ask_agent(path, &req);
    }
    run_in_process(plugin, &conf);
    return 1;
}
