/* Power-loss simulation for tests/power_loss.rs: a SQLite program whose files sit on a
 * "disk" that loses everything not yet synced when the power is cut.
 *
 *   powerfail EXT DB run    write transactions until the power cut (or PF_TXNS of them), printing
 *                           each id after COMMIT returns
 *   powerfail EXT DB check  "reboot": open, integrity_check, take the write lock once (capture
 *                           catches up), print what is there, close cleanly
 *
 * The stack is   SQLite -> walstream (the default VFS) -> "powerfail" VFS -> unix VFS.
 * powerfail is registered as the default before walstream is loaded, so walstream wraps it.
 *
 * The disk model:
 * - Database, WAL and journal files: the powerfail VFS keeps each file's content as the
 *   process sees it (a shared "page cache" per path, kept across close and reopen) and writes
 *   the changed 512-byte sectors (and any truncation) to the real file only on xSync. Reads see
 *   the cache. A power cut discards the cache: PF_KEEP=none keeps nothing unsynced, PF_KEEP=some
 *   writes back a random subset of the unsynced sectors (whole sectors, any order) and applies a
 *   pending truncation or not. Deleting a file (SQLite's xDelete) takes effect at once. The -shm
 *   is passed through: SQLite rebuilds it after a reboot (the first connection resets it).
 * - The spool (`DB-walstream/`), written by walstream with ordinary system calls: this program
 *   interposes fsync, fdatasync and rename (its exports come first: it is linked with
 *   --export-dynamic) to learn each spool file's durable length. A power cut truncates every
 *   spool file to it (0 for a file never synced); with PF_KEEP=some, to a random length between
 *   the durable one and the current one (appends reach the disk in order). Creating, renaming
 *   and deleting files and directories always persists (not modelled: a lost rename or
 *   directory entry).
 * - The power cut happens at the PF_CRASH_AT-th I/O event: a database/WAL xWrite, xTruncate or
 *   xSync, or an fsync/fdatasync by walstream (before the sync takes effect). The process then
 *   leaves with _exit, so nothing else runs. 0 means no power cut: at a normal exit everything
 *   cached is written out (the machine did not lose power).
 *
 * Other settings: PF_SYNC (NORMAL or FULL), PF_SEED, PF_TXNS.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECTOR 512

/* ---- deterministic randomness ---------------------------------------------------------- */
static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static unsigned rnd_below(unsigned n) { return n ? (unsigned)(rnd() % n) : 0; }

/* ---- settings and the power cut --------------------------------------------------------- */
static long crash_at;          /* I/O event that cuts the power; 0: never */
static long events;            /* I/O events so far */
static int keep_some;          /* PF_KEEP=some */
static int in_writeback;       /* our own writes and syncs are not events */
static char spool_dir[2 * PATH_MAX];
static size_t spool_dir_len;

static void power_cut(void);

static void io_event(void) {
    if (in_writeback) return;
    events++;
    if (crash_at > 0 && events == crash_at) power_cut();
}

/* ---- the page cache of database, WAL and journal files --------------------------------- */
typedef struct Shadow Shadow;
struct Shadow {
    char *path;
    unsigned char *data;      /* content as the process sees it */
    sqlite3_int64 size, cap;
    unsigned char *dirty;     /* one flag per sector: changed since the last sync */
    sqlite3_int64 dirty_cap;  /* sectors */
    sqlite3_int64 durable;    /* size of the real file */
    Shadow *next;
};
static Shadow *shadows;

static Shadow *shadow_find(const char *path) {
    for (Shadow *s = shadows; s; s = s->next)
        if (!strcmp(s->path, path)) return s;
    return 0;
}

static void shadow_reserve(Shadow *s, sqlite3_int64 size) {
    if (size > s->cap) {
        sqlite3_int64 cap = s->cap ? s->cap : 65536;
        while (cap < size) cap *= 2;
        s->data = realloc(s->data, cap);
        memset(s->data + s->cap, 0, cap - s->cap);
        s->cap = cap;
    }
    sqlite3_int64 sectors = (size + SECTOR - 1) / SECTOR;
    if (sectors > s->dirty_cap) {
        sqlite3_int64 cap = s->dirty_cap ? s->dirty_cap : 128;
        while (cap < sectors) cap *= 2;
        s->dirty = realloc(s->dirty, cap);
        memset(s->dirty + s->dirty_cap, 0, cap - s->dirty_cap);
        s->dirty_cap = cap;
    }
}

static void shadow_remove(const char *path) {
    for (Shadow **p = &shadows; *p; p = &(*p)->next) {
        if (!strcmp((*p)->path, path)) {
            Shadow *s = *p;
            *p = s->next;
            free(s->path);
            free(s->data);
            free(s->dirty);
            free(s);
            return;
        }
    }
}

/* Writes the dirty sectors (all, or a random subset) and the size to the real file: through
 * the unix file `real` when the file is open, else through a descriptor of our own (only at
 * exit, when closing it can no longer drop anyone's POSIX locks). */
static void shadow_write_back(Shadow *s, sqlite3_file *real, int fd, int subset) {
    in_writeback++;
    sqlite3_int64 sectors = (s->size + SECTOR - 1) / SECTOR;
    for (sqlite3_int64 i = 0; i < sectors; i++) {
        if (!s->dirty[i] || (subset && rnd_below(2))) continue;
        sqlite3_int64 off = i * SECTOR, n = s->size - off < SECTOR ? s->size - off : SECTOR;
        if (real) {
            if (real->pMethods->xWrite(real, s->data + off, (int)n, off) != SQLITE_OK) abort();
        } else if (pwrite(fd, s->data + off, n, off) != n) {
            abort();
        }
        s->dirty[i] = 0;
    }
    if (!subset || rnd_below(2)) {
        if (real) {
            sqlite3_int64 size;
            if (real->pMethods->xFileSize(real, &size) == SQLITE_OK && size > s->size &&
                real->pMethods->xTruncate(real, s->size) != SQLITE_OK)
                abort();
        } else {
            struct stat st;
            if (fstat(fd, &st) == 0 && st.st_size > s->size && ftruncate(fd, s->size) != 0) abort();
        }
    }
    in_writeback--;
}

static void write_back_all(int subset) {
    for (Shadow *s = shadows; s; s = s->next) {
        int fd = open(s->path, O_WRONLY);
        if (fd >= 0) {
            shadow_write_back(s, 0, fd, subset);
            close(fd);
        }
    }
}

/* ---- the powerfail VFS ------------------------------------------------------------------- */
typedef struct PfFile {
    sqlite3_file base;
    sqlite3_file *real;   /* the unix file, allocated right after this struct */
    Shadow *shadow;       /* null: passed through */
} PfFile;

static sqlite3_vfs *unix_vfs;

#define REAL(f) (((PfFile *)(f))->real)
#define SHADOW(f) (((PfFile *)(f))->shadow)

static int pf_close(sqlite3_file *f) { return REAL(f)->pMethods->xClose(REAL(f)); }

static int pf_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off) {
    Shadow *s = SHADOW(f);
    if (!s) return REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
    if (off >= s->size) {
        memset(buf, 0, n);
        return SQLITE_IOERR_SHORT_READ;
    }
    sqlite3_int64 avail = s->size - off;
    if (avail >= n) {
        memcpy(buf, s->data + off, n);
        return SQLITE_OK;
    }
    memcpy(buf, s->data + off, avail);
    memset((char *)buf + avail, 0, n - avail);
    return SQLITE_IOERR_SHORT_READ;
}

static int pf_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off) {
    Shadow *s = SHADOW(f);
    if (!s) return REAL(f)->pMethods->xWrite(REAL(f), buf, n, off);
    io_event();
    sqlite3_int64 end = off + n;
    shadow_reserve(s, end);
    memcpy(s->data + off, buf, n);
    if (end > s->size) s->size = end;
    for (sqlite3_int64 i = off / SECTOR; i <= (end - 1) / SECTOR; i++) s->dirty[i] = 1;
    return SQLITE_OK;
}

static int pf_truncate(sqlite3_file *f, sqlite3_int64 size) {
    Shadow *s = SHADOW(f);
    if (!s) return REAL(f)->pMethods->xTruncate(REAL(f), size);
    io_event();
    if (size < s->size) {
        memset(s->data + size, 0, s->size - size);
        /* The partial last sector changed too. */
        if (size % SECTOR) s->dirty[size / SECTOR] = 1;
        for (sqlite3_int64 i = (size + SECTOR - 1) / SECTOR; i < (s->size + SECTOR - 1) / SECTOR; i++)
            s->dirty[i] = 0;
    } else {
        shadow_reserve(s, size);
        for (sqlite3_int64 i = s->size / SECTOR; i < (size + SECTOR - 1) / SECTOR; i++) s->dirty[i] = 1;
    }
    s->size = size;
    return SQLITE_OK;
}

static int pf_sync(sqlite3_file *f, int flags) {
    PfFile *p = (PfFile *)f;
    if (!p->shadow) return p->real->pMethods->xSync(p->real, flags);
    io_event();
    shadow_write_back(p->shadow, p->real, -1, 0);
    in_writeback++;
    int rc = p->real->pMethods->xSync(p->real, flags);
    in_writeback--;
    if (rc == SQLITE_OK) p->shadow->durable = p->shadow->size;
    return rc;
}

static int pf_file_size(sqlite3_file *f, sqlite3_int64 *size) {
    Shadow *s = SHADOW(f);
    if (!s) return REAL(f)->pMethods->xFileSize(REAL(f), size);
    *size = s->size;
    return SQLITE_OK;
}

static int pf_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int pf_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int pf_check_reserved(sqlite3_file *f, int *out) {
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int pf_file_control(sqlite3_file *f, int op, void *arg) {
    /* A size hint would extend the real file behind the cache's back; it is only a hint. */
    if (SHADOW(f) && op == SQLITE_FCNTL_SIZE_HINT) return SQLITE_OK;
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int pf_sector_size(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int pf_device_characteristics(sqlite3_file *f) {
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int pf_shm_map(sqlite3_file *f, int i, int sz, int extend, void volatile **pp) {
    return REAL(f)->pMethods->xShmMap(REAL(f), i, sz, extend, pp);
}
static int pf_shm_lock(sqlite3_file *f, int off, int n, int flags) {
    return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void pf_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int pf_shm_unmap(sqlite3_file *f, int del) { return REAL(f)->pMethods->xShmUnmap(REAL(f), del); }
static int pf_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp) {
    (void)f; (void)off; (void)n;
    *pp = 0; /* no memory mapping: reads must see the cache */
    return SQLITE_OK;
}
static int pf_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) {
    (void)f; (void)off; (void)p;
    return SQLITE_OK;
}

static const sqlite3_io_methods pf_methods = {
    3, pf_close, pf_read, pf_write, pf_truncate, pf_sync, pf_file_size, pf_lock, pf_unlock,
    pf_check_reserved, pf_file_control, pf_sector_size, pf_device_characteristics, pf_shm_map,
    pf_shm_lock, pf_shm_barrier, pf_shm_unmap, pf_fetch, pf_unfetch,
};

static int pf_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags, int *out) {
    (void)vfs;
    PfFile *p = (PfFile *)f;
    memset(p, 0, sizeof *p);
    p->real = (sqlite3_file *)(p + 1);
    int rc = unix_vfs->xOpen(unix_vfs, name, p->real, flags, out);
    if (rc != SQLITE_OK) return rc;
    p->base.pMethods = &pf_methods;
    if (name && (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_JOURNAL))) {
        Shadow *s = shadow_find(name);
        if (!s) {
            /* First open in this "boot": the cache starts as the file on disk. */
            s = calloc(1, sizeof *s);
            s->path = strdup(name);
            sqlite3_int64 size = 0;
            if (p->real->pMethods->xFileSize(p->real, &size) != SQLITE_OK) abort();
            shadow_reserve(s, size);
            if (size && p->real->pMethods->xRead(p->real, s->data, (int)size, 0) != SQLITE_OK) abort();
            s->size = s->durable = size;
            s->next = shadows;
            shadows = s;
        }
        p->shadow = s;
    }
    return SQLITE_OK;
}

static int pf_delete(sqlite3_vfs *vfs, const char *name, int sync_dir) {
    (void)vfs;
    shadow_remove(name);
    return unix_vfs->xDelete(unix_vfs, name, sync_dir);
}
static int pf_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
    (void)vfs;
    return unix_vfs->xAccess(unix_vfs, name, flags, out);
}
static int pf_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out) {
    (void)vfs;
    return unix_vfs->xFullPathname(unix_vfs, name, n, out);
}
static void *pf_dl_open(sqlite3_vfs *vfs, const char *name) {
    (void)vfs;
    return unix_vfs->xDlOpen(unix_vfs, name);
}
static void pf_dl_error(sqlite3_vfs *vfs, int n, char *out) {
    (void)vfs;
    unix_vfs->xDlError(unix_vfs, n, out);
}
static void (*pf_dl_sym(sqlite3_vfs *vfs, void *h, const char *sym))(void) {
    (void)vfs;
    return unix_vfs->xDlSym(unix_vfs, h, sym);
}
static void pf_dl_close(sqlite3_vfs *vfs, void *h) {
    (void)vfs;
    unix_vfs->xDlClose(unix_vfs, h);
}
static int pf_randomness(sqlite3_vfs *vfs, int n, char *out) {
    (void)vfs;
    return unix_vfs->xRandomness(unix_vfs, n, out);
}
static int pf_sleep(sqlite3_vfs *vfs, int us) {
    (void)vfs;
    return unix_vfs->xSleep(unix_vfs, us);
}
static int pf_current_time(sqlite3_vfs *vfs, double *t) {
    (void)vfs;
    return unix_vfs->xCurrentTime(unix_vfs, t);
}
static int pf_last_error(sqlite3_vfs *vfs, int n, char *out) {
    (void)vfs;
    return unix_vfs->xGetLastError(unix_vfs, n, out);
}
static int pf_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *t) {
    (void)vfs;
    return unix_vfs->xCurrentTimeInt64(unix_vfs, t);
}

static sqlite3_vfs pf_vfs = {
    2, 0, 0, 0, "powerfail", 0, pf_open, pf_delete, pf_access, pf_full_pathname, pf_dl_open,
    pf_dl_error, pf_dl_sym, pf_dl_close, pf_randomness, pf_sleep, pf_current_time, pf_last_error,
    pf_current_time64, 0, 0, 0,
};

/* ---- the spool's durable lengths (interposed system calls) ----------------------------- */
typedef struct Durable { char *path; off_t size; struct Durable *next; } Durable;
static Durable *durables;

static Durable *durable_slot(const char *path) {
    for (Durable *d = durables; d; d = d->next)
        if (!strcmp(d->path, path)) return d;
    Durable *d = calloc(1, sizeof *d);
    d->path = strdup(path);
    d->size = 0;
    d->next = durables;
    durables = d;
    return d;
}

static int in_spool(const char *path) {
    return spool_dir_len && !strncmp(path, spool_dir, spool_dir_len) && path[spool_dir_len] == '/';
}

static void note_synced(int fd) {
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, sizeof path - 1);
    if (len < 0) return;
    path[len] = 0;
    struct stat st;
    if (!in_spool(path) || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    durable_slot(path)->size = st.st_size;
}

#define SYNC_FN(name)                                                                      \
    int name(int fd) {                                                                     \
        static int (*real)(int);                                                           \
        if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, #name);                           \
        io_event();                                                                        \
        int rc = real(fd);                                                                 \
        if (rc == 0) note_synced(fd);                                                      \
        return rc;                                                                         \
    }
SYNC_FN(fsync)
SYNC_FN(fdatasync)

int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    int rc = real(from, to);
    if (rc == 0) {
        char a[2 * PATH_MAX + 2], b[PATH_MAX];
        if (realpath(to, b) && in_spool(b)) {
            /* `from` no longer exists; match it by its absolute name. */
            if (from[0] == '/') snprintf(a, sizeof a, "%s", from);
            else { char cwd[PATH_MAX]; if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0; snprintf(a, sizeof a, "%s/%s", cwd, from); }
            off_t size = 0;
            for (Durable *d = durables; d; d = d->next)
                if (!strcmp(d->path, a)) size = d->size;
            durable_slot(b)->size = size;
        }
    }
    return rc;
}

static int record_initial(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)ftw;
    if (type == FTW_F) durable_slot(path)->size = st->st_size;
    return 0;
}

static int cut_spool_file(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)ftw;
    if (type != FTW_F) return 0;
    off_t durable = 0;
    for (Durable *d = durables; d; d = d->next)
        if (!strcmp(d->path, path)) durable = d->size;
    if (st->st_size <= durable) return 0;
    off_t keep = durable;
    if (keep_some) keep += (off_t)(rnd() % (uint64_t)(st->st_size - durable + 1));
    if (truncate(path, keep) != 0) abort();
    return 0;
}

static void power_cut(void) {
    in_writeback++;
    if (spool_dir_len) nftw(spool_dir, cut_spool_file, 16, FTW_PHYS);
    if (keep_some) write_back_all(1);
    fprintf(stderr, "power cut at I/O event %ld\n", events);
    _exit(0);
}

/* At a normal exit the machine keeps running: whatever is cached reaches the disk. */
static void flush_all(void) { write_back_all(0); }

/* ---- the program ------------------------------------------------------------------------- */
static void exec_or_die(sqlite3 *db, const char *sql) {
    char *err = 0;
    if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, err);
        exit(3);
    }
}

static sqlite3_int64 one_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, 0) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, sqlite3_errmsg(db));
        exit(3);
    }
    sqlite3_int64 v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    return v;
}

static void print_text(sqlite3 *db, const char *label, const char *sql) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, 0) != SQLITE_OK) {
        printf("%s: error: %s\n", label, sqlite3_errmsg(db));
        return;
    }
    if (sqlite3_step(st) == SQLITE_ROW) printf("%s: %s\n", label, (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

static sqlite3 *open_db(const char *path, const char *sync) {
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "open %s: %s\n", path, sqlite3_errmsg(db));
        exit(3);
    }
    char sql[256];
    snprintf(sql, sizeof sql, "PRAGMA busy_timeout=10000; PRAGMA journal_mode=WAL; PRAGMA synchronous=%s;", sync);
    exec_or_die(db, sql);
    return db;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    const char *ext = argv[1], *path = argv[2], *mode = argv[3];
    const char *sync = getenv("PF_SYNC") ? getenv("PF_SYNC") : "FULL";
    crash_at = getenv("PF_CRASH_AT") ? atol(getenv("PF_CRASH_AT")) : 0;
    keep_some = getenv("PF_KEEP") && !strcmp(getenv("PF_KEEP"), "some");
    if (getenv("PF_SEED")) rng_state = strtoull(getenv("PF_SEED"), 0, 10) * 2654435761ull + 1;
    long txns = getenv("PF_TXNS") ? atol(getenv("PF_TXNS")) : 200;
    if (!strcmp(mode, "check")) crash_at = 0;

    /* The spool's canonical name, as /proc/self/fd shows its files. */
    char dir[PATH_MAX], canonical[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) return 2;
    *slash = 0;
    if (!realpath(dir, canonical)) return 2;
    snprintf(spool_dir, sizeof spool_dir, "%s/%s-walstream", canonical, slash + 1);
    spool_dir_len = strlen(spool_dir);
    struct stat st;
    if (stat(spool_dir, &st) == 0) nftw(spool_dir, record_initial, 16, FTW_PHYS);

    unix_vfs = sqlite3_vfs_find(0);
    pf_vfs.szOsFile = (int)sizeof(PfFile) + unix_vfs->szOsFile;
    pf_vfs.mxPathname = unix_vfs->mxPathname;
    if (sqlite3_vfs_register(&pf_vfs, 1) != SQLITE_OK) return 4;

    /* Load walstream over powerfail (the default now), as the new default. */
    setenv("WALSTREAM_DEFAULT_VFS", "1", 1);
    sqlite3 *boot;
    char *err = 0;
    if (sqlite3_open(":memory:", &boot) != SQLITE_OK) return 5;
    sqlite3_enable_load_extension(boot, 1);
    if (sqlite3_load_extension(boot, ext, 0, &err) != SQLITE_OK) {
        fprintf(stderr, "load %s: %s\n", ext, err);
        return 6;
    }
    if (strcmp(sqlite3_vfs_find(0)->zName, "walstream") != 0) return 7;

    sqlite3 *db = open_db(path, sync);
    if (!strcmp(mode, "check")) {
        print_text(db, "integrity", "PRAGMA integrity_check");
        exec_or_die(db, "BEGIN IMMEDIATE; COMMIT;");
        sqlite3_int64 max = 0;
        if (one_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 't'") == 1)
            max = one_int(db, "SELECT coalesce(max(id), 0) FROM t");
        printf("max: %lld\n", (long long)max);
        print_text(db, "status", "SELECT walstream_status()");
        sqlite3_close(db);
        sqlite3_close(boot);
        flush_all();
        fflush(stdout);
        return 0;
    }

    exec_or_die(db, "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, pad BLOB);"
                    "CREATE TABLE IF NOT EXISTS big(k INTEGER PRIMARY KEY, pad BLOB);");
    char sql[512];
    snprintf(sql, sizeof sql, "PRAGMA wal_autocheckpoint=%d;", (int[]){0, 5, 40, 1000}[rnd_below(4)]);
    exec_or_die(db, sql);
    if (one_int(db, "SELECT count(*) FROM big") == 0)
        exec_or_die(db, "INSERT INTO big WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n "
                        "WHERE k < 200) SELECT k, randomblob(3000) FROM n;");
    sqlite3_int64 id = one_int(db, "SELECT coalesce(max(id), 0) FROM t");
    for (long i = 0; i < txns; i++) {
        id++;
        unsigned r = rnd_below(100);
        snprintf(sql, sizeof sql, "BEGIN; INSERT INTO t VALUES (%lld, randomblob(%u));%s COMMIT;", (long long)id,
                 (unsigned[]){10, 300, 3000}[rnd_below(3)],
                 r < 5 ? " UPDATE big SET pad = randomblob(3000);"
                 : r < 30 ? " UPDATE big SET pad = randomblob(3000) WHERE k % 13 = abs(random()) % 13;" : "");
        exec_or_die(db, sql);
        printf("%lld\n", (long long)id);
        fflush(stdout);
        unsigned c = rnd_below(100);
        if (c < 3) exec_or_die(db, "PRAGMA wal_checkpoint(PASSIVE);");
        else if (c < 5) exec_or_die(db, "PRAGMA wal_checkpoint(RESTART);");
        else if (c < 7) exec_or_die(db, "PRAGMA wal_checkpoint(TRUNCATE);");
        else if (c < 8) {
            sqlite3_close(db); /* the last close: checkpoint, WAL deleted */
            db = open_db(path, sync);
        }
    }
    sqlite3_close(db);
    sqlite3_close(boot);
    flush_all();
    return 0;
}
