//! The `walstream` VFS: a shim over the default VFS that reports capture moments.
//!
//! Layout follows SQLite's cksumvfs.c: each file SQLite opens through this VFS is a
//! [`ShimFile`] immediately followed, in the same allocation, by the lower VFS's file. Every
//! method delegates to the lower file; the main database file and its WAL (linked at the WAL's
//! `xOpen` with `sqlite3_database_file_object`) also report [`Moment`]s to the database's
//! [`walstream::capture::Capture`]:
//!
//! | SQLite call (main database unless noted)             | moment                       |
//! |------------------------------------------------------|------------------------------|
//! | `xShmLock(0, 1, LOCK/EXCLUSIVE)` returned OK          | `WriteLockAcquired` (after)  |
//! | `xShmLock(0, 1, UNLOCK/EXCLUSIVE)` while held         | `WriteLockReleasing` (before)|
//! | `xFileControl(COMMIT_PHASETWO)`, EXCLUSIVE, WAL open  | `CommitExclusive` (after)    |
//! | WAL `xWrite` at offset 0, WAL `xTruncate(0)`          | `WalReset` (before)          |
//! | `xShmUnmap(delete=1)`                                 | `Closing` (before)           |
//! | WAL `xClose`, heap-memory wal-index, EXCLUSIVE lock   | `Closing` (before)           |
//!
//! While capture is behind, the locks SQLite needs to discard WAL content are refused with
//! `SQLITE_BUSY` (read marks 1..4 exclusive for a restart, the EXCLUSIVE file lock of the last
//! close). `PRAGMA journal_mode` to anything but WAL is refused on captured databases.
//! See CAPTURE.md for the SQLite behaviour this relies on.
//!
//! Threading: SQLite serialises the calls on one connection's files (the main database file
//! and its WAL belong to the same pager), so a file's [`FileState`] is only touched by one
//! thread at a time. The per-database capture mutex is taken only for `event` and
//! `refuse_wal_reset`; while it is held, only the lower files' `xRead`/`xFileSize` are called.

use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::fs::File;
use std::io;
use std::mem::{align_of, size_of};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr;
use std::sync::Mutex;

use libsqlite3_sys::{
    sqlite3_file, sqlite3_filename, sqlite3_int64, sqlite3_io_methods, sqlite3_syscall_ptr,
    sqlite3_vfs, SQLITE_BUSY, SQLITE_CANTOPEN, SQLITE_ERROR, SQLITE_FCNTL_COMMIT_PHASETWO,
    SQLITE_FCNTL_PRAGMA, SQLITE_IOERR, SQLITE_IOERR_SHORT_READ, SQLITE_LOCK_EXCLUSIVE,
    SQLITE_NOTFOUND, SQLITE_OK, SQLITE_OPEN_MAIN_DB, SQLITE_OPEN_READONLY, SQLITE_OPEN_WAL,
    SQLITE_READONLY, SQLITE_SHM_EXCLUSIVE, SQLITE_SHM_LOCK, SQLITE_SHM_UNLOCK,
};
use walstream::capture::{self, CaptureIo, Moment, SharedCapture};
use walstream::wal::{ReadAt, SHM_PREFIX_BYTES};

use crate::api::{self, c_str_bytes, guard};

/// The name the VFS is registered under (`?vfs=walstream`).
pub(crate) const VFS_NAME: &CStr = c"walstream";

/// wal-index lock slot of the WAL write lock.
const SHM_WRITE_LOCK: c_int = 0;
/// First wal-index lock slot of read marks 1..4, and their count: taking all four exclusively
/// is what a WAL restart and a RESTART/TRUNCATE checkpoint need.
const SHM_READ_MARK_1: c_int = 4;
const SHM_READ_MARKS_1_TO_4: c_int = 4;
const SHM_LOCK_EXCLUSIVE: c_int = SQLITE_SHM_LOCK | SQLITE_SHM_EXCLUSIVE;
const SHM_UNLOCK_EXCLUSIVE: c_int = SQLITE_SHM_UNLOCK | SQLITE_SHM_EXCLUSIVE;
/// The newest `sqlite3_vfs` and `sqlite3_io_methods` versions this shim implements.
const MAX_VFS_VERSION: c_int = 3;
/// Largest single `xRead` issued by the ReadAt adapter (xRead takes an `int` byte count).
const READ_CHUNK_BYTES: usize = 1 << 30;

/// The start of every file opened through the shim; the lower file follows it directly.
#[repr(C)]
struct ShimFile {
    /// Must be first: SQLite sees a `sqlite3_file` whose pMethods is one of our tables.
    base: sqlite3_file,
    /// The lower VFS's file, at `self + size_of::<ShimFile>()`.
    lower: *mut sqlite3_file,
    /// Boxed state of a main database or WAL file; null for every other file.
    extra: *mut FileState,
}

const PTR_BYTES: usize = size_of::<*const c_void>();
const _: () = assert!(size_of::<sqlite3_file>() == PTR_BYTES);
const _: () = assert!(size_of::<ShimFile>() == 3 * PTR_BYTES);
const _: () = assert!(align_of::<ShimFile>() == align_of::<*const c_void>());
// The lower file starts at size_of::<ShimFile>(): keep it 8-byte aligned for its i64 fields.
const _: () = assert!(size_of::<ShimFile>().is_multiple_of(8));
// The C layouts this file relies on: an int then 18 method pointers; three ints, three
// pointers and 16 method pointers (on 64-bit targets, where the ints pad to two pointers).
const _: () = assert!(size_of::<sqlite3_io_methods>() == 19 * PTR_BYTES);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<sqlite3_vfs>() == 21 * PTR_BYTES);

enum FileState {
    Main(MainState),
    Wal(WalState),
}

/// A main database file opened with a capture.
struct MainState {
    capture: SharedCapture,
    /// The database path as SQLite named it (the registry key), for the `-wal` fallback.
    db_path: PathBuf,
    /// Region 0 of the wal-index as the lower `xShmMap` returned it; null when not mapped.
    shm_region0: *mut u8,
    /// `xShmMap` was ever called: false means a heap-memory wal-index (exclusive locking mode
    /// set before the WAL was opened), whose last close the shim sees only as the WAL's xClose.
    shm_used: bool,
    /// This connection holds the WAL write lock (a LOCK|EXCLUSIVE on slot 0 returned OK).
    holds_write_lock: bool,
    /// The file lock level, from successful xLock/xUnlock calls.
    lock_level: c_int,
    /// The linked WAL file of this connection; null when none is open.
    wal: *mut ShimFile,
}

/// A WAL file; `main` is its database file when that was opened through the shim.
struct WalState {
    main: *mut ShimFile,
}

/// Serialises registration, so that two concurrent loads register one VFS.
static REGISTER: Mutex<()> = Mutex::new(());

/// Registers the `walstream` VFS over the current default VFS, once per process; with
/// `make_default`, makes it the default (again, if it was registered before).
pub(crate) fn register(make_default: bool) -> Result<(), String> {
    let _serialised = REGISTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let existing = api::vfs_find(Some(VFS_NAME));
    if !existing.is_null() {
        if make_default {
            let rc = api::vfs_register(existing, true);
            if rc != SQLITE_OK {
                return Err(format!(
                    "making walstream the default VFS failed: error {rc}"
                ));
            }
        }
        return Ok(());
    }
    let lower = api::vfs_find(None);
    if lower.is_null() {
        return Err("SQLite has no default VFS to wrap".into());
    }
    let vfs = Box::into_raw(Box::new(build_vfs(lower)?));
    let rc = api::vfs_register(vfs, make_default);
    if rc != SQLITE_OK {
        // SAFETY: SQLite refused the VFS, so nothing refers to it; it came from Box::into_raw.
        drop(unsafe { Box::from_raw(vfs) });
        return Err(format!("registering the walstream VFS failed: error {rc}"));
    }
    // The VFS stays registered, and so allocated, for the life of the process.
    Ok(())
}

/// The shim VFS over `lower`: its sizes and version, our trampolines where `lower` has a method.
fn build_vfs(lower: *mut sqlite3_vfs) -> Result<sqlite3_vfs, String> {
    // SAFETY: lower comes from sqlite3_vfs_find: a registered VFS, which SQLite never frees.
    // Only the fields that exist in its iVersion are read.
    let l = unsafe { read_vfs_fields(lower) };
    let Some(_) = l.xOpen else {
        return Err("the default VFS has no xOpen".into());
    };
    let shim_bytes = c_int::try_from(size_of::<ShimFile>()).expect("ShimFile is a few bytes");
    Ok(sqlite3_vfs {
        iVersion: l.iVersion,
        szOsFile: l
            .szOsFile
            .checked_add(shim_bytes)
            .ok_or("lower szOsFile too large")?,
        mxPathname: l.mxPathname,
        pNext: ptr::null_mut(),
        zName: VFS_NAME.as_ptr(),
        pAppData: lower.cast(),
        xOpen: Some(vfs_open),
        xDelete: l.xDelete.and(Some(vfs_delete)),
        xAccess: l.xAccess.and(Some(vfs_access)),
        xFullPathname: l.xFullPathname.and(Some(vfs_full_pathname)),
        xDlOpen: l.xDlOpen.and(Some(vfs_dl_open)),
        xDlError: l.xDlError.and(Some(vfs_dl_error)),
        xDlSym: l.xDlSym.and(Some(vfs_dl_sym)),
        xDlClose: l.xDlClose.and(Some(vfs_dl_close)),
        xRandomness: l.xRandomness.and(Some(vfs_randomness)),
        xSleep: l.xSleep.and(Some(vfs_sleep)),
        xCurrentTime: l.xCurrentTime.and(Some(vfs_current_time)),
        xGetLastError: l.xGetLastError.and(Some(vfs_get_last_error)),
        xCurrentTimeInt64: l.xCurrentTimeInt64.and(Some(vfs_current_time_int64)),
        xSetSystemCall: l.xSetSystemCall.and(Some(vfs_set_system_call)),
        xGetSystemCall: l.xGetSystemCall.and(Some(vfs_get_system_call)),
        xNextSystemCall: l.xNextSystemCall.and(Some(vfs_next_system_call)),
    })
}

/// A copy of the fields of `vfs` that exist in its version (capped at 3), the others None.
///
/// # Safety
/// `vfs` points to a live `sqlite3_vfs` whose fields up to its `iVersion` are initialised.
unsafe fn read_vfs_fields(vfs: *const sqlite3_vfs) -> sqlite3_vfs {
    // SAFETY: by the caller's contract; each field is read in place, never past iVersion.
    unsafe {
        let version = (*vfs).iVersion.clamp(1, MAX_VFS_VERSION);
        sqlite3_vfs {
            iVersion: version,
            szOsFile: (*vfs).szOsFile,
            mxPathname: (*vfs).mxPathname,
            pNext: ptr::null_mut(),
            zName: (*vfs).zName,
            pAppData: (*vfs).pAppData,
            xOpen: (*vfs).xOpen,
            xDelete: (*vfs).xDelete,
            xAccess: (*vfs).xAccess,
            xFullPathname: (*vfs).xFullPathname,
            xDlOpen: (*vfs).xDlOpen,
            xDlError: (*vfs).xDlError,
            xDlSym: (*vfs).xDlSym,
            xDlClose: (*vfs).xDlClose,
            xRandomness: (*vfs).xRandomness,
            xSleep: (*vfs).xSleep,
            xCurrentTime: (*vfs).xCurrentTime,
            xGetLastError: (*vfs).xGetLastError,
            xCurrentTimeInt64: if version >= 2 {
                (*vfs).xCurrentTimeInt64
            } else {
                None
            },
            xSetSystemCall: if version >= 3 {
                (*vfs).xSetSystemCall
            } else {
                None
            },
            xGetSystemCall: if version >= 3 {
                (*vfs).xGetSystemCall
            } else {
                None
            },
            xNextSystemCall: if version >= 3 {
                (*vfs).xNextSystemCall
            } else {
                None
            },
        }
    }
}

/// The lower VFS of the shim VFS `vfs`.
fn lower_vfs(vfs: *mut sqlite3_vfs) -> *mut sqlite3_vfs {
    // SAFETY: SQLite calls VFS methods only with the VFS they belong to: ours, whose pAppData
    // build_vfs set to the lower VFS.
    unsafe { (*vfs).pAppData.cast() }
}

/// Calls the lower VFS's `$method` with the lower VFS pointer and the remaining arguments;
/// `$missing` when it has none (never, since build_vfs copies the lower's Nones).
macro_rules! lower_vfs_call {
    ($vfs:expr, $method:ident, $missing:expr $(, $arg:expr)* $(,)?) => {{
        let lower = lower_vfs($vfs);
        // SAFETY: lower is a registered VFS (see lower_vfs), and build_vfs installed this
        // trampoline only where the lower VFS's version has the field.
        match unsafe { (*lower).$method } {
            // SAFETY: the lower VFS's own method, called with its own VFS pointer and the
            // arguments SQLite gave the shim, under the same contract.
            Some(f) => unsafe { f(lower $(, $arg)*) },
            None => $missing,
        }
    }};
}

// ---- VFS trampolines -------------------------------------------------------------------

unsafe extern "C" fn vfs_delete(vfs: *mut sqlite3_vfs, name: *const c_char, sync: c_int) -> c_int {
    guard(SQLITE_IOERR, || {
        lower_vfs_call!(vfs, xDelete, SQLITE_IOERR, name, sync)
    })
}

unsafe extern "C" fn vfs_access(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    guard(SQLITE_IOERR, || {
        lower_vfs_call!(vfs, xAccess, SQLITE_IOERR, name, flags, out)
    })
}

unsafe extern "C" fn vfs_full_pathname(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    guard(SQLITE_IOERR, || {
        lower_vfs_call!(vfs, xFullPathname, SQLITE_IOERR, name, n_out, out)
    })
}

unsafe extern "C" fn vfs_dl_open(vfs: *mut sqlite3_vfs, name: *const c_char) -> *mut c_void {
    guard(ptr::null_mut(), || {
        lower_vfs_call!(vfs, xDlOpen, ptr::null_mut(), name)
    })
}

unsafe extern "C" fn vfs_dl_error(vfs: *mut sqlite3_vfs, n: c_int, out: *mut c_char) {
    guard((), || lower_vfs_call!(vfs, xDlError, (), n, out));
}

type DlSymResult = Option<unsafe extern "C" fn(*mut sqlite3_vfs, *mut c_void, *const c_char)>;

unsafe extern "C" fn vfs_dl_sym(
    vfs: *mut sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> DlSymResult {
    guard(None, || lower_vfs_call!(vfs, xDlSym, None, handle, symbol))
}

unsafe extern "C" fn vfs_dl_close(vfs: *mut sqlite3_vfs, handle: *mut c_void) {
    guard((), || lower_vfs_call!(vfs, xDlClose, (), handle));
}

unsafe extern "C" fn vfs_randomness(vfs: *mut sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    guard(0, || lower_vfs_call!(vfs, xRandomness, 0, n, out))
}

unsafe extern "C" fn vfs_sleep(vfs: *mut sqlite3_vfs, micros: c_int) -> c_int {
    guard(0, || lower_vfs_call!(vfs, xSleep, 0, micros))
}

unsafe extern "C" fn vfs_current_time(vfs: *mut sqlite3_vfs, out: *mut f64) -> c_int {
    guard(SQLITE_ERROR, || {
        lower_vfs_call!(vfs, xCurrentTime, SQLITE_ERROR, out)
    })
}

unsafe extern "C" fn vfs_get_last_error(
    vfs: *mut sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    guard(0, || lower_vfs_call!(vfs, xGetLastError, 0, n, out))
}

unsafe extern "C" fn vfs_current_time_int64(
    vfs: *mut sqlite3_vfs,
    out: *mut sqlite3_int64,
) -> c_int {
    guard(SQLITE_ERROR, || {
        lower_vfs_call!(vfs, xCurrentTimeInt64, SQLITE_ERROR, out)
    })
}

unsafe extern "C" fn vfs_set_system_call(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    new: sqlite3_syscall_ptr,
) -> c_int {
    guard(SQLITE_ERROR, || {
        lower_vfs_call!(vfs, xSetSystemCall, SQLITE_NOTFOUND, name, new)
    })
}

unsafe extern "C" fn vfs_get_system_call(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
) -> sqlite3_syscall_ptr {
    guard(None, || lower_vfs_call!(vfs, xGetSystemCall, None, name))
}

unsafe extern "C" fn vfs_next_system_call(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
) -> *const c_char {
    guard(ptr::null(), || {
        lower_vfs_call!(vfs, xNextSystemCall, ptr::null(), name)
    })
}

// ---- xOpen -------------------------------------------------------------------------------

unsafe extern "C" fn vfs_open(
    vfs: *mut sqlite3_vfs,
    name: sqlite3_filename,
    file: *mut sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    guard(SQLITE_CANTOPEN, || open(vfs, name, file, flags, out_flags))
}

fn open(
    vfs: *mut sqlite3_vfs,
    name: sqlite3_filename,
    file: *mut sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let shim = file.cast::<ShimFile>();
    // pMethods stays null until the open succeeds, so SQLite will not call xClose otherwise.
    // SAFETY: xOpen gets szOsFile bytes (ShimFile, then the lower szOsFile), 8-byte aligned;
    // the lower file takes the part after ours.
    let lower = unsafe {
        let lower = file
            .cast::<u8>()
            .add(size_of::<ShimFile>())
            .cast::<sqlite3_file>();
        let blank = sqlite3_file {
            pMethods: ptr::null(),
        };
        ptr::write(
            shim,
            ShimFile {
                base: blank,
                lower,
                extra: ptr::null_mut(),
            },
        );
        Lower(lower)
    };
    let rc = lower_vfs_call!(vfs, xOpen, SQLITE_CANTOPEN, name, lower.0, flags, out_flags);
    if rc != SQLITE_OK {
        lower.close_if_open();
        return rc;
    }
    let state = match new_state(name, flags, out_flags, shim) {
        Ok(state) => state,
        Err(rc) => {
            lower.close_if_open();
            return rc;
        }
    };
    let methods = io_methods_for(lower.version());
    // SAFETY: shim was initialised above and SQLite has not seen it yet.
    unsafe {
        (*shim).extra = state.map_or(ptr::null_mut(), Box::into_raw);
        (*shim).base.pMethods = methods;
    }
    SQLITE_OK
}

/// The state of a newly opened file, linking a WAL to its main database file.
fn new_state(
    name: sqlite3_filename,
    flags: c_int,
    out_flags: *mut c_int,
    shim: *mut ShimFile,
) -> Result<Option<Box<FileState>>, c_int> {
    // SAFETY: name is null or the NUL-terminated file name SQLite passed to xOpen, alive while
    // the file is open.
    let Some(name_bytes) = (unsafe { c_str_bytes(name) }) else {
        return Ok(None); // a temporary database: no name, nothing to capture
    };
    if flags & SQLITE_OPEN_MAIN_DB != 0 {
        let db_path = PathBuf::from(OsStr::from_bytes(name_bytes));
        // walstream_target, walstream_signing_key, walstream_segment_bytes, ...: the core asks
        // for the URI parameters it knows by name.
        let param = |key: &str| {
            std::ffi::CString::new(key)
                .ok()
                .and_then(|k| api::uri_parameter(name, &k))
        };
        let attached = catch_unwind(AssertUnwindSafe(|| {
            capture::attach_uri(&db_path, &param).map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err("capture setup panicked".to_string()));
        return match attached {
            Ok(capture) => Ok(Some(Box::new(FileState::Main(MainState {
                capture,
                db_path,
                shm_region0: ptr::null_mut(),
                shm_used: false,
                holds_write_lock: false,
                lock_level: 0,
                wal: ptr::null_mut(),
            })))),
            Err(msg) if opened_read_only(flags, out_flags) => {
                // A read-only connection never commits, so there is nothing for it to capture;
                // failing it would make walstream refuse databases it cannot replicate anyway
                // (read-only directories, under LD_PRELOAD). It runs uncaptured.
                api::log(
                    SQLITE_READONLY,
                    &format!(
                        "read-only {} opened without capture: {msg}",
                        db_path.display()
                    ),
                );
                Ok(None)
            }
            Err(msg) => {
                api::log(
                    SQLITE_CANTOPEN,
                    &format!("cannot capture {}: {msg}", db_path.display()),
                );
                Err(SQLITE_CANTOPEN)
            }
        };
    }
    if flags & SQLITE_OPEN_WAL != 0 {
        let main = api::database_file_object(name);
        let main = if is_shim_file(main) {
            main.cast::<ShimFile>()
        } else {
            ptr::null_mut()
        };
        // SAFETY: main is null or the pager's main database file, opened through this shim
        // and open for longer than its WAL; same connection, so no other access is live.
        if let Some(FileState::Main(m)) = unsafe { state_of(main) } {
            m.wal = shim;
            return Ok(Some(Box::new(FileState::Wal(WalState { main }))));
        }
        return Ok(Some(Box::new(FileState::Wal(WalState {
            main: ptr::null_mut(),
        }))));
    }
    Ok(None)
}

/// Whether the file was opened read-only: asked for, or the lower VFS fell back to it.
fn opened_read_only(flags: c_int, out_flags: *mut c_int) -> bool {
    let out = if out_flags.is_null() {
        0
    } else {
        // SAFETY: out_flags is SQLite's out parameter of xOpen, set by the lower xOpen.
        unsafe { *out_flags }
    };
    (flags | out) & SQLITE_OPEN_READONLY != 0
}

/// True when `file` is non-null and was opened through this shim.
fn is_shim_file(file: *mut sqlite3_file) -> bool {
    if file.is_null() {
        return false;
    }
    // SAFETY: a non-null sqlite3_file from sqlite3_database_file_object: the pager's open
    // main database file, whose first field is pMethods.
    let methods = unsafe { (*file).pMethods };
    [&IO_METHODS_V1, &IO_METHODS_V2, &IO_METHODS_V3]
        .iter()
        .any(|m| ptr::eq(*m, methods))
}

/// The state of an open shim file, or `None` for a passthrough file or a null pointer.
///
/// # Safety
/// `shim` is null or an open file of this shim, and no other reference to its state is live
/// (SQLite serialises calls on one connection's files; see the module comment).
unsafe fn state_of<'a>(shim: *mut ShimFile) -> Option<&'a mut FileState> {
    if shim.is_null() {
        return None;
    }
    // SAFETY: by the caller's contract; extra is null or a Box this shim owns until xClose.
    unsafe { (*shim).extra.as_mut() }
}

/// The lower file and the state of an open shim file.
///
/// # Safety
/// As for [`state_of`], with `file` non-null.
unsafe fn parts<'a>(file: *mut sqlite3_file) -> (Lower, Option<&'a mut FileState>) {
    let shim = file.cast::<ShimFile>();
    // SAFETY: by the caller's contract, file is an open ShimFile.
    unsafe { (Lower((*shim).lower), state_of(shim)) }
}

// ---- The lower file --------------------------------------------------------------------

/// Calls the lower file's `$method` (present from io_methods version `$version`) on the lower
/// file with the remaining arguments; `$missing` when the lower file lacks it.
macro_rules! lower_call {
    ($lower:expr, $version:expr, $method:ident, $missing:expr $(, $arg:expr)* $(,)?) => {{
        let lower: Lower = $lower;
        match lower.methods($version).and_then(|m| m.$method) {
            // SAFETY: the lower file's own method, called on that file with the arguments
            // SQLite gave the shim, under the same contract.
            Some(f) => unsafe { f(lower.0 $(, $arg)*) },
            None => $missing,
        }
    }};
}

/// The lower VFS's file inside an open shim file (or one being opened).
#[derive(Clone, Copy)]
struct Lower(*mut sqlite3_file);

impl Lower {
    /// The lower io methods when their version is at least `version`.
    fn methods(self, version: c_int) -> Option<&'static sqlite3_io_methods> {
        // SAFETY: self.0 is the lower part of a shim file: its pMethods is null or a table
        // valid until the lower xClose (in practice a static).
        let methods = unsafe { (*self.0).pMethods.as_ref() }?;
        (methods.iVersion >= version).then_some(methods)
    }

    fn version(self) -> c_int {
        self.methods(1).map_or(0, |m| m.iVersion)
    }

    /// Closes the lower file after a failed open, if the lower xOpen left it open.
    fn close_if_open(self) {
        let _ = lower_call!(self, 1, xClose, SQLITE_OK);
    }
}

/// [`ReadAt`] over a lower file, through its `xRead` and `xFileSize` (no SQLite mutex).
struct LowerReader(Lower);

impl ReadAt for LowerReader {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let end = buf.len().min(done + READ_CHUNK_BYTES);
            let chunk = &mut buf[done..end];
            let len = c_int::try_from(chunk.len()).expect("chunk is at most 1 GiB");
            let at = i64::try_from(offset + done as u64)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
            let dest = chunk.as_mut_ptr().cast::<c_void>();
            let rc = lower_call!(self.0, 1, xRead, SQLITE_IOERR, dest, len, at);
            match rc {
                SQLITE_OK => done += chunk.len(),
                SQLITE_IOERR_SHORT_READ => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"))
                }
                rc => return Err(io::Error::other(format!("xRead failed: SQLite error {rc}"))),
            }
        }
        Ok(())
    }

    fn size(&mut self) -> io::Result<u64> {
        let mut size: sqlite3_int64 = 0;
        let out: *mut sqlite3_int64 = ptr::addr_of_mut!(size);
        let rc = lower_call!(self.0, 1, xFileSize, SQLITE_IOERR, out);
        if rc != SQLITE_OK {
            return Err(io::Error::other(format!(
                "xFileSize failed: SQLite error {rc}"
            )));
        }
        u64::try_from(size).map_err(|_| io::Error::other("negative file size"))
    }
}

/// The database file as SQLite's pager reads it: bytes past its end read as zeros (`xRead`
/// returns `SQLITE_IOERR_SHORT_READ` with the rest of the buffer zeroed, which the pager takes as
/// a zero page). A snapshot then holds what SQLite would see, instead of failing, and leaving
/// capture behind for good, on a database whose page count runs past the file (walcksum.test
/// builds one). WAL reads stay strict: a short WAL read is the end of the log.
struct PastEofReadsZero(LowerReader);

impl ReadAt for PastEofReadsZero {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self.0.read_exact_at(buf, offset) {
            // One xRead (pages are far smaller than a chunk): it zero-filled what it could not
            // read.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && buf.len() <= READ_CHUNK_BYTES => {
                Ok(())
            }
            other => other,
        }
    }

    fn size(&mut self) -> io::Result<u64> {
        self.0.size()
    }
}

/// The WAL of a database with no linked WAL file, when it cannot be opened: empty.
struct EmptyFile;

impl ReadAt for EmptyFile {
    fn read_exact_at(&mut self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no WAL file"))
        }
    }
    fn size(&mut self) -> io::Result<u64> {
        Ok(0)
    }
}

// ---- Capture moments ---------------------------------------------------------------------

/// Reports `moment` for the main database file `main` (its lower file and state). Panics in
/// the capture are caught here so that the caller's lock bookkeeping always continues.
fn fire(main: Lower, state: &MainState, moment: Moment) {
    let shm = (!state.shm_region0.is_null()).then(|| {
        // Other processes may write these bytes: a volatile copy; capture checks consistency.
        // SAFETY: shm_region0 is region 0 as the lower xShmMap returned it (>= 32 KiB), mapped
        // until xShmUnmap, which clears the field.
        unsafe { ptr::read_volatile(state.shm_region0.cast::<[u8; SHM_PREFIX_BYTES]>()) }
    });
    let mut wal: Box<dyn ReadAt> = if state.wal.is_null() {
        let wal_path = format!("{}-wal", state.db_path.display());
        // Opening (and closing) our own descriptor is safe for the WAL only: closing one on
        // the database or -shm file would drop this process's POSIX locks on it.
        match File::open(wal_path) {
            Ok(f) => Box::new(f),
            Err(_) => Box::new(EmptyFile),
        }
    } else {
        // SAFETY: a linked WAL is open (its xClose unlinks it) and belongs to this connection.
        Box::new(LowerReader(Lower(unsafe { (*state.wal).lower })))
    };
    let mut db = PastEofReadsZero(LowerReader(main));
    let capture = state.capture.clone();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        let io = CaptureIo {
            shm: shm.as_ref(),
            wal: wal.as_mut(),
            db: &mut db,
        };
        capture.lock().event(moment, io);
    }));
    if caught.is_err() {
        api::log(SQLITE_IOERR, &format!("capture of {moment:?} panicked"));
    }
}

/// Whether capture of this database is behind, so SQLite must not discard WAL content.
fn refuses_reset(state: &MainState) -> bool {
    catch_unwind(AssertUnwindSafe(|| state.capture.lock().refuse_wal_reset())).unwrap_or(true)
}

/// Reports `moment` on the main database linked to a WAL file, if there is one.
fn fire_on_linked_main(state: Option<&mut FileState>, moment: Moment) {
    let Some(FileState::Wal(w)) = state else {
        return;
    };
    if w.main.is_null() {
        return;
    }
    // SAFETY: a linked main file is open (its xClose unlinks the WAL) and belongs to the
    // same connection as the WAL, whose method is running: no other access is live.
    let (main_lower, main_state) = unsafe { parts(w.main.cast()) };
    if let Some(FileState::Main(m)) = main_state {
        fire(main_lower, m, moment);
    }
}

// ---- io_methods ----------------------------------------------------------------------------

/// The io_methods table of each version: a file gets the version of its lower file (so a
/// lower file without `xShm*` keeps SQLite from using WAL mode, as it would without the shim).
static IO_METHODS_V3: sqlite3_io_methods = io_methods(3);
static IO_METHODS_V2: sqlite3_io_methods = io_methods(2);
static IO_METHODS_V1: sqlite3_io_methods = io_methods(1);

fn io_methods_for(lower_version: c_int) -> &'static sqlite3_io_methods {
    match lower_version {
        ..=1 => &IO_METHODS_V1,
        2 => &IO_METHODS_V2,
        _ => &IO_METHODS_V3,
    }
}

const fn io_methods(version: c_int) -> sqlite3_io_methods {
    sqlite3_io_methods {
        iVersion: version,
        xClose: Some(io_close),
        xRead: Some(io_read),
        xWrite: Some(io_write),
        xTruncate: Some(io_truncate),
        xSync: Some(io_sync),
        xFileSize: Some(io_file_size),
        xLock: Some(io_lock),
        xUnlock: Some(io_unlock),
        xCheckReservedLock: Some(io_check_reserved_lock),
        xFileControl: Some(io_file_control),
        xSectorSize: Some(io_sector_size),
        xDeviceCharacteristics: Some(io_device_characteristics),
        xShmMap: if version >= 2 { Some(io_shm_map) } else { None },
        xShmLock: if version >= 2 {
            Some(io_shm_lock)
        } else {
            None
        },
        xShmBarrier: if version >= 2 {
            Some(io_shm_barrier)
        } else {
            None
        },
        xShmUnmap: if version >= 2 {
            Some(io_shm_unmap)
        } else {
            None
        },
        xFetch: if version >= 3 { Some(io_fetch) } else { None },
        xUnfetch: if version >= 3 { Some(io_unfetch) } else { None },
    }
}

// Every io method below is called by SQLite only on a file whose xOpen succeeded (pMethods is
// one of our tables) and before its xClose returns; that is the contract `parts` needs.

unsafe extern "C" fn io_close(file: *mut sqlite3_file) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see above (io methods contract).
        let (lower, state) = unsafe { parts(file) };
        match state {
            Some(FileState::Main(m)) if !m.wal.is_null() => {
                // SAFETY: the linked WAL is open and belongs to this connection.
                if let Some(FileState::Wal(w)) = unsafe { state_of(m.wal) } {
                    w.main = ptr::null_mut();
                }
            }
            Some(FileState::Wal(w)) if !w.main.is_null() => {
                // SAFETY: the linked main file is open and belongs to this connection.
                let (main_lower, main_state) = unsafe { parts(w.main.cast()) };
                if let Some(FileState::Main(m)) = main_state {
                    if !m.shm_used && m.lock_level == SQLITE_LOCK_EXCLUSIVE {
                        // Heap-memory wal-index: no xShmUnmap, so the last close (checkpoint
                        // done, WAL about to be deleted) shows here, while the WAL is readable.
                        fire(main_lower, m, Moment::Closing);
                    }
                    m.wal = ptr::null_mut();
                }
            }
            _ => {}
        }
        let rc = lower_call!(lower, 1, xClose, SQLITE_OK);
        let shim = file.cast::<ShimFile>();
        // SAFETY: extra is null or the Box made in open; nothing refers to it any more (the
        // links were cleared above, and SQLite makes no further call on this file).
        unsafe {
            let extra = std::mem::replace(&mut (*shim).extra, ptr::null_mut());
            if !extra.is_null() {
                drop(Box::from_raw(extra));
            }
        }
        rc
    })
}

unsafe extern "C" fn io_read(
    file: *mut sqlite3_file,
    buf: *mut c_void,
    n: c_int,
    at: i64,
) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, _) = unsafe { parts(file) };
        lower_call!(lower, 1, xRead, SQLITE_IOERR, buf, n, at)
    })
}

unsafe extern "C" fn io_write(
    file: *mut sqlite3_file,
    buf: *const c_void,
    n: c_int,
    at: i64,
) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, state) = unsafe { parts(file) };
        if at == 0 {
            // A WAL header write: a restart, or a new WAL. The old frames become unreadable.
            fire_on_linked_main(state, Moment::WalReset);
        }
        lower_call!(lower, 1, xWrite, SQLITE_IOERR, buf, n, at)
    })
}

unsafe extern "C" fn io_truncate(file: *mut sqlite3_file, size: i64) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, state) = unsafe { parts(file) };
        if size == 0 {
            fire_on_linked_main(state, Moment::WalReset);
        }
        lower_call!(lower, 1, xTruncate, SQLITE_IOERR, size)
    })
}

unsafe extern "C" fn io_sync(file: *mut sqlite3_file, flags: c_int) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, _) = unsafe { parts(file) };
        lower_call!(lower, 1, xSync, SQLITE_IOERR, flags)
    })
}

unsafe extern "C" fn io_file_size(file: *mut sqlite3_file, out: *mut sqlite3_int64) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, _) = unsafe { parts(file) };
        lower_call!(lower, 1, xFileSize, SQLITE_IOERR, out)
    })
}

unsafe extern "C" fn io_lock(file: *mut sqlite3_file, level: c_int) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, state) = unsafe { parts(file) };
        let Some(FileState::Main(m)) = state else {
            return lower_call!(lower, 1, xLock, SQLITE_IOERR, level);
        };
        // The last connection to close takes EXCLUSIVE to checkpoint and delete the WAL (which
        // is open then). Without a WAL (rollback-journal mode) there is nothing to protect.
        if level == SQLITE_LOCK_EXCLUSIVE && !m.wal.is_null() && refuses_reset(m) {
            return SQLITE_BUSY;
        }
        let rc = lower_call!(lower, 1, xLock, SQLITE_IOERR, level);
        if rc == SQLITE_OK {
            m.lock_level = m.lock_level.max(level); // a lower request is a no-op
        }
        rc
    })
}

unsafe extern "C" fn io_unlock(file: *mut sqlite3_file, level: c_int) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, state) = unsafe { parts(file) };
        let rc = lower_call!(lower, 1, xUnlock, SQLITE_IOERR, level);
        if let (SQLITE_OK, Some(FileState::Main(m))) = (rc, state) {
            m.lock_level = m.lock_level.min(level); // a higher request is a no-op
        }
        rc
    })
}

unsafe extern "C" fn io_check_reserved_lock(file: *mut sqlite3_file, out: *mut c_int) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, _) = unsafe { parts(file) };
        lower_call!(lower, 1, xCheckReservedLock, SQLITE_IOERR, out)
    })
}

unsafe extern "C" fn io_file_control(
    file: *mut sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, state) = unsafe { parts(file) };
        let Some(FileState::Main(m)) = state else {
            return lower_call!(lower, 1, xFileControl, SQLITE_NOTFOUND, op, arg);
        };
        match op {
            SQLITE_FCNTL_PRAGMA => {
                if let Some(rc) = refuse_journal_mode_change(arg, lower) {
                    return rc;
                }
                lower_call!(lower, 1, xFileControl, SQLITE_NOTFOUND, op, arg)
            }
            SQLITE_FCNTL_COMMIT_PHASETWO => {
                let rc = lower_call!(lower, 1, xFileControl, SQLITE_NOTFOUND, op, arg);
                // Exclusive locking mode in WAL mode: no wal-index locks mark the commit. A
                // rollback-journal commit (no WAL open) also holds EXCLUSIVE: not a WAL commit.
                if m.lock_level == SQLITE_LOCK_EXCLUSIVE && !m.wal.is_null() {
                    fire(lower, m, Moment::CommitExclusive);
                }
                rc
            }
            _ => lower_call!(lower, 1, xFileControl, SQLITE_NOTFOUND, op, arg),
        }
    })
}

/// `PRAGMA journal_mode=<anything but WAL>` on a captured database in WAL mode: SQLITE_ERROR
/// with a message, since leaving WAL mode would stop capture silently. A database that is not
/// in WAL mode (new, or in a rollback-journal mode) may set any mode: it is not being captured,
/// and refusing would break programs that set their journal mode explicitly (LD_PRELOAD).
fn refuse_journal_mode_change(arg: *mut c_void, main: Lower) -> Option<c_int> {
    let az = arg.cast::<*mut c_char>();
    if az.is_null() {
        return None;
    }
    // SAFETY: for SQLITE_FCNTL_PRAGMA, pArg is a char*[3]: [0] the error or result (null on
    // entry), [1] the pragma name, [2] its argument or null; the strings live through the call.
    let (name, value) = unsafe { (c_str_bytes(*az.add(1)), c_str_bytes(*az.add(2))) };
    if !name.is_some_and(|n| n.eq_ignore_ascii_case(b"journal_mode")) {
        return None;
    }
    let value = value?;
    if value.eq_ignore_ascii_case(b"wal") || !in_wal_mode(main) || leaving_wal_allowed() {
        return None;
    }
    let msg = format!(
        "walstream: journal_mode={} would stop capture; a database replicated by walstream \
         must stay in WAL mode",
        String::from_utf8_lossy(value)
    );
    // SAFETY: az[0] is the out slot SQLite reads and frees with sqlite3_free.
    unsafe { *az = api::malloc_c_string(&msg) };
    Some(SQLITE_ERROR)
}

/// Whether the database file's header says WAL mode (bytes 18 and 19, the file format read and
/// write versions, are 2). A file too short to have a header is not in WAL mode.
fn in_wal_mode(main: Lower) -> bool {
    let mut versions = [0u8; 2];
    LowerReader(main).read_exact_at(&mut versions, 18).is_ok() && versions == [2, 2]
}

/// `WALSTREAM_ALLOW_LEAVING_WAL=1`: let `PRAGMA journal_mode` leave WAL mode. Capture stops
/// while the database is in another mode; when WAL mode resumes, the changed database file
/// starts a new generation from a snapshot (never a silent gap).
fn leaving_wal_allowed() -> bool {
    std::env::var("WALSTREAM_ALLOW_LEAVING_WAL").is_ok_and(|v| {
        let v = v.trim();
        v == "1" || v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("yes")
    })
}

unsafe extern "C" fn io_sector_size(file: *mut sqlite3_file) -> c_int {
    guard(0, || {
        // SAFETY: see the io methods contract.
        let (lower, _) = unsafe { parts(file) };
        lower_call!(lower, 1, xSectorSize, 0)
    })
}

unsafe extern "C" fn io_device_characteristics(file: *mut sqlite3_file) -> c_int {
    guard(0, || {
        // SAFETY: see the io methods contract.
        let (lower, _) = unsafe { parts(file) };
        lower_call!(lower, 1, xDeviceCharacteristics, 0)
    })
}

unsafe extern "C" fn io_shm_map(
    file: *mut sqlite3_file,
    region: c_int,
    region_bytes: c_int,
    extend: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, state) = unsafe { parts(file) };
        let rc = lower_call!(
            lower,
            2,
            xShmMap,
            SQLITE_IOERR,
            region,
            region_bytes,
            extend,
            pp
        );
        if let Some(FileState::Main(m)) = state {
            m.shm_used = true;
            let usable = rc == SQLITE_OK || rc & 0xff == SQLITE_READONLY;
            let mapped = if pp.is_null() {
                ptr::null_mut()
            } else {
                // SAFETY: pp is the out pointer SQLite passed; the lower xShmMap has set it.
                unsafe { *pp }
            };
            if region == 0 && usable && !mapped.is_null() {
                m.shm_region0 = mapped.cast();
            }
        }
        rc
    })
}

unsafe extern "C" fn io_shm_lock(
    file: *mut sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, state) = unsafe { parts(file) };
        let Some(FileState::Main(m)) = state else {
            return lower_call!(lower, 2, xShmLock, SQLITE_IOERR, offset, n, flags);
        };
        if offset == SHM_WRITE_LOCK && flags == SHM_LOCK_EXCLUSIVE {
            let rc = lower_call!(lower, 2, xShmLock, SQLITE_IOERR, offset, n, flags);
            if rc == SQLITE_OK {
                m.holds_write_lock = true;
                fire(lower, m, Moment::WriteLockAcquired);
            }
            return rc;
        }
        if offset == SHM_WRITE_LOCK && flags == SHM_UNLOCK_EXCLUSIVE && m.holds_write_lock {
            fire(lower, m, Moment::WriteLockReleasing);
            m.holds_write_lock = false;
        } else if offset == SHM_READ_MARK_1
            && n == SHM_READ_MARKS_1_TO_4
            && flags == SHM_LOCK_EXCLUSIVE
            && refuses_reset(m)
        {
            return SQLITE_BUSY; // a WAL restart or RESTART/TRUNCATE checkpoint must wait
        }
        lower_call!(lower, 2, xShmLock, SQLITE_IOERR, offset, n, flags)
    })
}

unsafe extern "C" fn io_shm_barrier(file: *mut sqlite3_file) {
    guard((), || {
        // SAFETY: see the io methods contract.
        let (lower, _) = unsafe { parts(file) };
        lower_call!(lower, 2, xShmBarrier, ());
    });
}

unsafe extern "C" fn io_shm_unmap(file: *mut sqlite3_file, delete: c_int) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, state) = unsafe { parts(file) };
        let Some(FileState::Main(m)) = state else {
            return lower_call!(lower, 2, xShmUnmap, SQLITE_OK, delete);
        };
        if delete != 0 {
            // The last connection is closing: the WAL and -shm are about to be deleted.
            fire(lower, m, Moment::Closing);
        }
        let rc = lower_call!(lower, 2, xShmUnmap, SQLITE_OK, delete);
        m.shm_region0 = ptr::null_mut();
        rc
    })
}

unsafe extern "C" fn io_fetch(
    file: *mut sqlite3_file,
    at: i64,
    n: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, _) = unsafe { parts(file) };
        let no_mapping = || {
            if !pp.is_null() {
                // SAFETY: pp is SQLite's out pointer; null means "use xRead instead".
                unsafe { *pp = ptr::null_mut() };
            }
            SQLITE_OK
        };
        lower_call!(lower, 3, xFetch, no_mapping(), at, n, pp)
    })
}

unsafe extern "C" fn io_unfetch(file: *mut sqlite3_file, at: i64, p: *mut c_void) -> c_int {
    guard(SQLITE_IOERR, || {
        // SAFETY: see the io methods contract.
        let (lower, _) = unsafe { parts(file) };
        lower_call!(lower, 3, xUnfetch, SQLITE_OK, at, p)
    })
}
