//! The thin FFI layer over SQLite's extension routines table (`sqlite3_api_routines`).
//!
//! The extension links no SQLite: every call into SQLite goes through the table the host passes
//! to the entry point. The first table seen is kept for the life of the process (the extension
//! is loaded permanently, and the table is a static of the SQLite library that passed it). Only
//! routines that exist in SQLite 3.32 and later are used; the entry point checks the version.

use std::ffi::{c_char, c_int, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use libsqlite3_sys::{
    sqlite3, sqlite3_api_routines, sqlite3_context, sqlite3_file, sqlite3_value, sqlite3_vfs,
    SQLITE_MISUSE, SQLITE_OK, SQLITE_TRANSIENT, SQLITE_UTF8,
};

/// The routines table of the SQLite library the extension was first loaded into.
static API: AtomicPtr<sqlite3_api_routines> = AtomicPtr::new(ptr::null_mut());

/// An extension entry point's signature (`sqlite3_loadext_entry`).
pub(crate) type EntryFn =
    extern "C" fn(*mut sqlite3, *mut *mut c_char, *const sqlite3_api_routines) -> c_int;

/// Runs `f`, turning a panic into `fallback`: a panic must never unwind into SQLite.
pub(crate) fn guard<R>(fallback: R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The process-wide routines table, once [`Entry::install`] has stored it.
fn routines() -> Option<&'static sqlite3_api_routines> {
    let p = API.load(Ordering::Acquire);
    // SAFETY: API holds null or the table SQLite passed to an entry point: `&sqlite3Apis`, a
    // static of the SQLite library, which outlives every connection and so this extension.
    unsafe { p.cast_const().as_ref() }
}

/// The arguments of one call of an entry point (the loading connection, or an auto-extension
/// call for a new connection).
pub(crate) struct Entry {
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    api: &'static sqlite3_api_routines,
}

impl Entry {
    /// Wraps the raw entry-point arguments; `None` when SQLite passed no routines table.
    pub(crate) fn new(
        db: *mut sqlite3,
        pz_err_msg: *mut *mut c_char,
        p_api: *const sqlite3_api_routines,
    ) -> Option<Self> {
        // SAFETY: an entry point's pApi is null or SQLite's static routines table (see API).
        let api = unsafe { p_api.as_ref() }?;
        Some(Self {
            db,
            pz_err_msg,
            api,
        })
    }

    /// `sqlite3_libversion_number()` of the calling library (0 if the routine is missing).
    pub(crate) fn libversion_number(&self) -> c_int {
        match self.api.libversion_number {
            // SAFETY: a routine of the caller's table; it takes no arguments.
            Some(f) => unsafe { f() },
            None => 0,
        }
    }

    /// Makes this call's table the one every later call uses. Fails if the extension was
    /// already loaded into another SQLite library of this process: its VFS and functions
    /// would then mix the two libraries' internals.
    pub(crate) fn install(&self) -> Result<(), String> {
        let mine = ptr::from_ref(self.api).cast_mut();
        match API.compare_exchange(ptr::null_mut(), mine, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(existing) if existing == mine => Ok(()),
            Err(_) => Err(
                "walstream is already loaded into another SQLite library in this \
                           process; load it into one only"
                    .to_string(),
            ),
        }
    }

    /// Reports `msg` through `*pzErrMsg`, allocated with the caller's `sqlite3_malloc` (SQLite
    /// frees it with `sqlite3_free`).
    pub(crate) fn set_error(&self, msg: &str) {
        if self.pz_err_msg.is_null() {
            return;
        }
        let copy = malloc_c_string_with(self.api, msg);
        // SAFETY: pzErrMsg is non-null and points to the char* SQLite reads after the call.
        unsafe { *self.pz_err_msg = copy };
    }

    /// Registers `walstream_status()` on this call's connection.
    pub(crate) fn register_status_function(&self) -> Result<(), String> {
        let Some(create) = self.api.create_function_v2 else {
            return Err("sqlite3_create_function_v2 is missing from the routines table".into());
        };
        // SAFETY: db is the open connection passed to the entry point; a static C name; an
        // xFunc of the right signature that ignores pUserData; no step/final/destroy.
        let rc = unsafe {
            create(
                self.db,
                c"walstream_status".as_ptr(),
                0,
                SQLITE_UTF8,
                ptr::null_mut(),
                Some(walstream_status),
                None,
                None,
                None,
            )
        };
        if rc == SQLITE_OK {
            Ok(())
        } else {
            Err(format!(
                "registering walstream_status() failed with SQLite error {rc}"
            ))
        }
    }
}

/// Registers `entry` to run on every connection opened after this call.
pub(crate) fn register_auto_extension(entry: EntryFn) -> Result<(), String> {
    let Some(auto_extension) = routines().and_then(|api| api.auto_extension) else {
        return Err("sqlite3_auto_extension is missing from the routines table".into());
    };
    // SAFETY: sqlite3_auto_extension declares its argument as `void(*)(void)` but calls it
    // with the entry-point signature, which is EntryFn's; both are plain C function pointers.
    let as_void_fn = unsafe { std::mem::transmute::<EntryFn, unsafe extern "C" fn()>(entry) };
    // SAFETY: a routine of the installed table; the function lives as long as the process
    // (the extension is never unloaded: it returns SQLITE_OK_LOAD_PERMANENTLY).
    let rc = unsafe { auto_extension(Some(as_void_fn)) };
    if rc == SQLITE_OK {
        Ok(())
    } else {
        Err(format!(
            "sqlite3_auto_extension failed with SQLite error {rc}"
        ))
    }
}

/// `xFunc` of `walstream_status()`: the capture status of the connection's main database.
unsafe extern "C" fn walstream_status(
    ctx: *mut sqlite3_context,
    _argc: c_int,
    _argv: *mut *mut sqlite3_value,
) {
    guard((), || {
        let Some(api) = routines() else { return };
        let (Some(db_handle), Some(db_filename), Some(result_text)) =
            (api.context_db_handle, api.db_filename, api.result_text)
        else {
            return;
        };
        // SAFETY: ctx is xFunc's live context; db_filename gets its connection and a C string,
        // and returns null or a name valid while "main" is open (through this call).
        let name = unsafe { db_filename(db_handle(ctx), c"main".as_ptr()) };
        // SAFETY: as above, null or a NUL-terminated string owned by SQLite.
        let bytes = unsafe { c_str_bytes(name) };
        let path = bytes
            .filter(|b| !b.is_empty())
            .map(|b| Path::new(OsStr::from_bytes(b)));
        let json = walstream::capture::status_json(path);
        let Ok(len) = c_int::try_from(json.len()) else {
            result_error(api, ctx, "walstream_status(): status too long");
            return;
        };
        // SAFETY: ctx is live; the text is valid UTF-8 of `len` bytes that SQLite copies
        // (SQLITE_TRANSIENT) before returning.
        unsafe { result_text(ctx, json.as_ptr().cast(), len, SQLITE_TRANSIENT()) };
    });
}

fn result_error(api: &sqlite3_api_routines, ctx: *mut sqlite3_context, msg: &str) {
    if let Some(f) = api.result_error {
        let len = c_int::try_from(msg.len()).unwrap_or(0);
        // SAFETY: ctx is the live function context; SQLite copies `len` bytes of msg.
        unsafe { f(ctx, msg.as_ptr().cast(), len) };
    }
}

/// The bytes of a NUL-terminated C string, or `None` for null.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn c_str_bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
}

fn malloc_c_string_with(api: &sqlite3_api_routines, s: &str) -> *mut c_char {
    let Some(malloc) = api.malloc else {
        return ptr::null_mut();
    };
    let bytes: Vec<u8> = s.bytes().map(|b| if b == 0 { b'?' } else { b }).collect();
    let Ok(size) = c_int::try_from(bytes.len() + 1) else {
        return ptr::null_mut();
    };
    // SAFETY: sqlite3_malloc with a positive size; it returns null or `size` writable bytes.
    let p = unsafe { malloc(size) }.cast::<u8>();
    if !p.is_null() {
        // SAFETY: p has room for the bytes and the terminating NUL; the regions are distinct.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
        }
    }
    p.cast()
}

/// A copy of `s` in memory from `sqlite3_malloc` (null if that fails), for SQLite to free.
pub(crate) fn malloc_c_string(s: &str) -> *mut c_char {
    routines().map_or(ptr::null_mut(), |api| malloc_c_string_with(api, s))
}

/// `sqlite3_log(code, "walstream: %s", msg)`.
pub(crate) fn log(code: c_int, msg: &str) {
    let Some(log) = routines().and_then(|api| api.log) else {
        return;
    };
    let Ok(text) = CString::new(msg.replace('\0', "?")) else {
        return;
    };
    // SAFETY: sqlite3_log is variadic; the format consumes exactly one NUL-terminated string.
    unsafe { log(code, c"walstream: %s".as_ptr(), text.as_ptr()) };
}

/// `sqlite3_vfs_find(name)`; `None` finds the default VFS. Null when there is none.
pub(crate) fn vfs_find(name: Option<&CStr>) -> *mut sqlite3_vfs {
    let Some(find) = routines().and_then(|api| api.vfs_find) else {
        return ptr::null_mut();
    };
    let name = name.map_or(ptr::null(), CStr::as_ptr);
    // SAFETY: name is null or a NUL-terminated string that lives through the call.
    unsafe { find(name) }
}

/// `sqlite3_vfs_register(vfs, make_default)`.
pub(crate) fn vfs_register(vfs: *mut sqlite3_vfs, make_default: bool) -> c_int {
    let Some(register) = routines().and_then(|api| api.vfs_register) else {
        return SQLITE_MISUSE;
    };
    // SAFETY: vfs is a fully initialised VFS that lives for the rest of the process (a leaked
    // box, or a VFS SQLite already knows).
    unsafe { register(vfs, c_int::from(make_default)) }
}

/// `sqlite3_uri_parameter(file, key)` as an owned string.
///
/// `file` must be a file name SQLite passed to `xOpen` (such names carry the URI parameters
/// after their terminating NUL), or null.
pub(crate) fn uri_parameter(file: *const c_char, key: &CStr) -> Option<String> {
    let f = routines()?.uri_parameter?;
    if file.is_null() {
        return None;
    }
    // SAFETY: file is a name SQLite passed to xOpen (see above); key is NUL-terminated. The
    // result is null or a string inside the file name's allocation.
    let value = unsafe { f(file, key.as_ptr()) };
    // SAFETY: null or NUL-terminated, valid while the file name is (through this call).
    let bytes = unsafe { c_str_bytes(value) }?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// `sqlite3_database_file_object(wal_name)`: the main database file of a WAL or journal that
/// is being opened. `wal_name` must be the name SQLite passed to that file's `xOpen`.
pub(crate) fn database_file_object(wal_name: *const c_char) -> *mut sqlite3_file {
    let Some(f) = routines().and_then(|api| api.database_file_object) else {
        return ptr::null_mut();
    };
    if wal_name.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: wal_name is the name SQLite passed to xOpen for a WAL, as this routine requires.
    unsafe { f(wal_name) }
}
