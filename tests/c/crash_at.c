/* Test-only crash injector, preloaded (LD_PRELOAD) into a writer process by
 * tests/crash_torture.rs. With CRASH_AT=<kind>:<n>:<fraction> in the environment, the process
 * kills itself with SIGKILL at the n-th matching I/O call:
 *
 *   spool  write() to a walstream spool file (*.wseg, *.wsnap.tmp): writes the first
 *          <fraction> of the buffer, then dies (a torn spool append)
 *   wal    pwrite()/pwrite64() to a SQLite WAL (*-wal): a torn WAL frame, then death
 *   db     pwrite()/pwrite64() to the main database (*.db): a torn checkpoint write
 *   sync   fsync()/fdatasync() on any file: dies just before syncing
 *
 * Anything else passes straight through. Single-threaded writers only (the counter is not
 * atomic). Files are recognised by their /proc/self/fd link. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

enum { OFF, SPOOL, WAL, DB, SYNC };
static int mode = -1;
static long countdown;
static double fraction;

static void init(void) {
    if (mode >= 0) return;
    mode = OFF;
    const char *spec = getenv("CRASH_AT");
    char kind[16];
    if (!spec || sscanf(spec, "%15[a-z]:%ld:%lf", kind, &countdown, &fraction) != 3) return;
    if (!strcmp(kind, "spool")) mode = SPOOL;
    else if (!strcmp(kind, "wal")) mode = WAL;
    else if (!strcmp(kind, "db")) mode = DB;
    else if (!strcmp(kind, "sync")) mode = SYNC;
}

static int fd_ends_with(int fd, const char *suffix) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, sizeof path - 1);
    if (len < 0) return 0;
    path[len] = 0;
    size_t n = strlen(suffix);
    return (size_t)len >= n && strcmp(path + len - n, suffix) == 0;
}

static int hit(int wanted, int matches) {
    init();
    return mode == wanted && matches && --countdown == 0;
}

static void die(void) {
    kill(getpid(), SIGKILL);
    for (;;) pause();
}

static size_t part(size_t n) { return (size_t)((double)n * fraction); }

ssize_t write(int fd, const void *buf, size_t n) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (mode != OFF && hit(SPOOL, fd_ends_with(fd, ".wseg") || fd_ends_with(fd, ".wsnap.tmp"))) {
        real(fd, buf, part(n));
        die();
    }
    return real(fd, buf, n);
}

#define PWRITE(name, off_type)                                                             \
    ssize_t name(int fd, const void *buf, size_t n, off_type off) {                        \
        static ssize_t (*real)(int, const void *, size_t, off_type);                       \
        if (!real) real = (ssize_t (*)(int, const void *, size_t, off_type))dlsym(RTLD_NEXT, #name); \
        if (mode != OFF) {                                                                 \
            init();                                                                        \
            int wal = fd_ends_with(fd, "-wal");                                            \
            if (hit(WAL, wal) || hit(DB, !wal && fd_ends_with(fd, ".db"))) {               \
                real(fd, buf, part(n), off);                                               \
                die();                                                                     \
            }                                                                              \
        }                                                                                  \
        return real(fd, buf, n, off);                                                      \
    }
PWRITE(pwrite, off_t)
PWRITE(pwrite64, off64_t)

#define SYNC_FN(name)                                                                      \
    int name(int fd) {                                                                     \
        static int (*real)(int);                                                           \
        if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, #name);                           \
        if (mode != OFF && hit(SYNC, 1)) die();                                            \
        return real(fd);                                                                   \
    }
SYNC_FN(fsync)
SYNC_FN(fdatasync)
