//! `LD_PRELOAD` drop-in: `LD_PRELOAD=libwalstream.so program` makes `walstream` the default
//! VFS of an unmodified program that links SQLite dynamically.
//!
//! The library exports `sqlite3_open`, `sqlite3_open_v2` and `sqlite3_open16`. Preloaded, these
//! come first in the process's global symbol scope, so the program's calls reach them. Each call
//! finds the real function in the library the caller links (its dependency tree, else the next
//! definition after this library), installs walstream into that SQLite once, and calls through.
//!
//! Installing needs the host's `sqlite3_api_routines` table, which SQLite hands only to
//! extension entry points. SQLite also hands it to auto-extensions, without any dlopen or the
//! load-extension permission: register a bootstrap entry with the real
//! `sqlite3_auto_extension`, open one `:memory:` connection with the real `sqlite3_open_v2`
//! (the entry point runs, registering the VFS as the default), cancel the bootstrap entry and
//! close the connection. This happens at the first open, not in a constructor, so that a
//! program's `sqlite3_config` calls (which must precede `sqlite3_initialize`) still work.
//!
//! Not preloaded (loaded by `.load`/`sqlite3_load_extension`, which on unix dlopens with
//! `RTLD_GLOBAL`), the exported functions can still be bound by code that resolves
//! `sqlite3_open*` for the first time later and does not see the real SQLite in the global
//! scope (a SQLite loaded `RTLD_LOCAL` by a plugin). Then they only forward to the caller's own
//! SQLite: no installation, no change of behaviour.
//!
//! A program with SQLite linked into its executable resolves the calls to itself: nothing is
//! interposed and nothing is captured (no `<db>-walstream/` directory appears, and
//! `SELECT walstream_status()` is an unknown function).

use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use libsqlite3_sys::{
    sqlite3, sqlite3_api_routines, SQLITE_ERROR, SQLITE_OK, SQLITE_OPEN_CREATE,
    SQLITE_OPEN_READWRITE,
};

use crate::api::guard;

type OpenV2Fn =
    unsafe extern "C" fn(*const c_char, *mut *mut sqlite3, c_int, *const c_char) -> c_int;
type OpenFn = unsafe extern "C" fn(*const c_char, *mut *mut sqlite3) -> c_int;
type Open16Fn = unsafe extern "C" fn(*const c_void, *mut *mut sqlite3) -> c_int;
type CloseFn = unsafe extern "C" fn(*mut sqlite3) -> c_int;
type AutoExtFn = unsafe extern "C" fn(Option<unsafe extern "C" fn()>) -> c_int;
type LogFn = unsafe extern "C" fn(c_int, *const c_char, ...);

/// Set by the constructor when this library is in `LD_PRELOAD` or `/etc/ld.so.preload`.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Runs when the library is loaded, by `LD_PRELOAD` or by `dlopen`.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

extern "C" fn on_load() {
    guard((), || PRELOADED.store(is_preloaded(), Ordering::Release));
}

/// Whether this library was named in `LD_PRELOAD` (or `/etc/ld.so.preload`), read once at load
/// time, while the environment and working directory are as the dynamic loader saw them.
fn is_preloaded() -> bool {
    let Some(me) = own_path() else { return false };
    let me_canonical = std::fs::canonicalize(&me).ok();
    let matches = |entry: &str| {
        if entry.is_empty() {
            return false;
        }
        if entry.contains('/') {
            let canonical = std::fs::canonicalize(entry).ok();
            canonical.is_some() && canonical == me_canonical
        } else {
            // A bare name is searched in the library path; the loaded copy is ours if the
            // file names agree.
            me.file_name().is_some_and(|n| n == OsStr::new(entry))
        }
    };
    let split = |s: &str| s.split([':', ' ', '\t', '\n']).any(matches);
    let env = std::env::var("LD_PRELOAD").unwrap_or_default();
    let system = std::fs::read_to_string("/etc/ld.so.preload").unwrap_or_default();
    split(&env) || split(&system)
}

/// Whether the constructor found this library preloaded.
pub(crate) fn preloaded() -> bool {
    PRELOADED.load(Ordering::Acquire)
}

// ---- The exported functions --------------------------------------------------------------
//
// On x86_64 and aarch64 each export is a two-instruction trampoline that passes its return
// address (the caller) as an extra argument, then jumps to the Rust implementation: the caller
// decides which SQLite is "the real one". Elsewhere the caller is unknown (null).

#[cfg(target_arch = "x86_64")]
mod exports {
    use super::*;

    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open_v2(
        _filename: *const c_char,
        _db: *mut *mut sqlite3,
        _flags: c_int,
        _vfs: *const c_char,
    ) -> c_int {
        // The return address is at [rsp] on entry; it becomes the fifth argument (r8).
        core::arch::naked_asm!("mov r8, qword ptr [rsp]", "jmp {f}", f = sym open_v2_from)
    }

    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open(
        _filename: *const c_char,
        _db: *mut *mut sqlite3,
    ) -> c_int {
        core::arch::naked_asm!("mov rdx, qword ptr [rsp]", "jmp {f}", f = sym open_from)
    }

    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open16(
        _filename: *const c_void,
        _db: *mut *mut sqlite3,
    ) -> c_int {
        core::arch::naked_asm!("mov rdx, qword ptr [rsp]", "jmp {f}", f = sym open16_from)
    }
}

#[cfg(target_arch = "aarch64")]
mod exports {
    use super::*;

    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open_v2(
        _filename: *const c_char,
        _db: *mut *mut sqlite3,
        _flags: c_int,
        _vfs: *const c_char,
    ) -> c_int {
        // The return address is in x30 on entry; it becomes the fifth argument (x4).
        core::arch::naked_asm!("mov x4, x30", "b {f}", f = sym open_v2_from)
    }

    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open(
        _filename: *const c_char,
        _db: *mut *mut sqlite3,
    ) -> c_int {
        core::arch::naked_asm!("mov x2, x30", "b {f}", f = sym open_from)
    }

    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open16(
        _filename: *const c_void,
        _db: *mut *mut sqlite3,
    ) -> c_int {
        core::arch::naked_asm!("mov x2, x30", "b {f}", f = sym open16_from)
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod exports {
    use super::*;

    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open_v2(
        filename: *const c_char,
        db: *mut *mut sqlite3,
        flags: c_int,
        vfs: *const c_char,
    ) -> c_int {
        // SAFETY: forwarded with SQLite's own contract; the caller is unknown.
        unsafe { open_v2_from(filename, db, flags, vfs, ptr::null()) }
    }

    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open(filename: *const c_char, db: *mut *mut sqlite3) -> c_int {
        // SAFETY: as above.
        unsafe { open_from(filename, db, ptr::null()) }
    }

    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open16(
        filename: *const c_void,
        db: *mut *mut sqlite3,
    ) -> c_int {
        // SAFETY: as above.
        unsafe { open16_from(filename, db, ptr::null()) }
    }
}

/// Our own definition of `name`, to recognise (and skip) it during lookups.
fn own_symbol(name: &CStr) -> *mut c_void {
    match name.to_bytes() {
        b"sqlite3_open_v2" => exports::sqlite3_open_v2 as *mut c_void,
        b"sqlite3_open" => exports::sqlite3_open as *mut c_void,
        b"sqlite3_open16" => exports::sqlite3_open16 as *mut c_void,
        _ => ptr::null_mut(),
    }
}

/// Sets `*db` to null when the real function cannot be found (as SQLite does on failure).
fn fail_open(db: *mut *mut sqlite3) -> c_int {
    if !db.is_null() {
        // SAFETY: db is the caller's out pointer, as for sqlite3_open*.
        unsafe { *db = ptr::null_mut() };
    }
    SQLITE_ERROR
}

unsafe extern "C" fn open_v2_from(
    filename: *const c_char,
    db: *mut *mut sqlite3,
    flags: c_int,
    vfs: *const c_char,
    caller: *const c_void,
) -> c_int {
    let real = guard(ptr::null_mut(), || real_symbol(c"sqlite3_open_v2", caller));
    if real.is_null() {
        return fail_open(db);
    }
    // SAFETY: the real sqlite3_open_v2 of the caller's SQLite has this signature.
    let real = unsafe { std::mem::transmute::<*mut c_void, OpenV2Fn>(real) };
    guard((), || install_if_preloaded(real));
    // SAFETY: the caller's arguments, passed on unchanged under the same contract.
    unsafe { real(filename, db, flags, vfs) }
}

unsafe extern "C" fn open_from(
    filename: *const c_char,
    db: *mut *mut sqlite3,
    caller: *const c_void,
) -> c_int {
    let (real, real_v2) = guard((ptr::null_mut(), ptr::null_mut()), || {
        (
            real_symbol(c"sqlite3_open", caller),
            real_symbol(c"sqlite3_open_v2", caller),
        )
    });
    if real.is_null() {
        return fail_open(db);
    }
    if !real_v2.is_null() {
        // SAFETY: the real sqlite3_open_v2 of the caller's SQLite has this signature.
        let v2 = unsafe { std::mem::transmute::<*mut c_void, OpenV2Fn>(real_v2) };
        guard((), || install_if_preloaded(v2));
    }
    // SAFETY: the real sqlite3_open; the caller's arguments, passed on unchanged.
    let real = unsafe { std::mem::transmute::<*mut c_void, OpenFn>(real) };
    // SAFETY: as above.
    unsafe { real(filename, db) }
}

unsafe extern "C" fn open16_from(
    filename: *const c_void,
    db: *mut *mut sqlite3,
    caller: *const c_void,
) -> c_int {
    let (real, real_v2) = guard((ptr::null_mut(), ptr::null_mut()), || {
        (
            real_symbol(c"sqlite3_open16", caller),
            real_symbol(c"sqlite3_open_v2", caller),
        )
    });
    if real.is_null() {
        return fail_open(db);
    }
    if !real_v2.is_null() {
        // SAFETY: the real sqlite3_open_v2 of the caller's SQLite has this signature.
        let v2 = unsafe { std::mem::transmute::<*mut c_void, OpenV2Fn>(real_v2) };
        guard((), || install_if_preloaded(v2));
    }
    // SAFETY: the real sqlite3_open16; the caller's arguments, passed on unchanged.
    let real = unsafe { std::mem::transmute::<*mut c_void, Open16Fn>(real) };
    // SAFETY: as above.
    unsafe { real(filename, db) }
}

// ---- Finding the real functions ----------------------------------------------------------

/// This library's base address and path, from `dladdr` on one of its functions.
fn own_object() -> Option<(*mut c_void, PathBuf)> {
    let mut info = empty_dl_info();
    // SAFETY: dladdr with an address inside this library and a valid out struct.
    let ok = unsafe { libc::dladdr(on_load as *const c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader, valid while loaded.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some((
        info.dli_fbase,
        PathBuf::from(OsStr::from_bytes(name.to_bytes())),
    ))
}

fn own_path() -> Option<PathBuf> {
    own_object().map(|(_, p)| p)
}

fn empty_dl_info() -> libc::Dl_info {
    libc::Dl_info {
        dli_fname: ptr::null(),
        dli_fbase: ptr::null_mut(),
        dli_sname: ptr::null(),
        dli_saddr: ptr::null_mut(),
    }
}

/// `name` as the object containing `addr` sees it: defined there or in its dependencies.
/// Null when `addr` is in this library or the main program (whose handle would search the
/// global scope, where a preloaded library comes first), or on any failure.
fn symbol_near(addr: *const c_void, name: &CStr) -> *mut c_void {
    if addr.is_null() {
        return ptr::null_mut();
    }
    let mut info = empty_dl_info();
    // SAFETY: dladdr only inspects the loader's tables for addr; info is a valid out struct.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return ptr::null_mut();
    }
    if own_object().is_some_and(|(base, _)| base == info.dli_fbase) {
        return ptr::null_mut();
    }
    // SAFETY: dli_fname is NUL-terminated (checked non-null above), owned by the loader.
    if unsafe { *info.dli_fname } == 0 {
        return ptr::null_mut();
    }
    // SAFETY: RTLD_NOLOAD only returns a handle to an object already loaded (its reference
    // count is raised and lowered again by dlclose below); it never loads or runs code.
    let handle = unsafe { libc::dlopen(info.dli_fname, libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: a live handle and a NUL-terminated name.
    let sym = unsafe { libc::dlsym(handle, name.as_ptr()) };
    // SAFETY: the handle from dlopen above; the object stays loaded (it was loaded before).
    unsafe { libc::dlclose(handle) };
    if sym == own_symbol(name) {
        ptr::null_mut()
    } else {
        sym
    }
}

/// The real `name` for a call from `caller`: the definition the caller's object sees in its own
/// dependency tree; else the next definition after this library in the global scope; else the
/// first loaded object (other than this library) defining it.
fn real_symbol(name: &CStr, caller: *const c_void) -> *mut c_void {
    let ours = own_symbol(name);
    let near = symbol_near(caller, name);
    if !near.is_null() {
        return near;
    }
    // SAFETY: RTLD_NEXT with a NUL-terminated name; searches the objects after this one.
    let next = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if !next.is_null() && next != ours {
        return next;
    }
    first_loaded_definition(name, ours)
}

/// Walks the loaded objects (`dl_iterate_phdr`) for the first one other than this library
/// whose dependency tree defines `name` differently from `ours`.
fn first_loaded_definition(name: &CStr, ours: *mut c_void) -> *mut c_void {
    struct Search<'a> {
        name: &'a CStr,
        ours: *mut c_void,
        own_base: usize,
        found: *mut c_void,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: data is the &mut Search passed to dl_iterate_phdr below; info is valid for
        // this call.
        let (search, info) = unsafe { (&mut *data.cast::<Search<'_>>(), &*info) };
        if info.dlpi_name.is_null() || info.dlpi_addr as usize == search.own_base {
            return 0;
        }
        // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
        if unsafe { *info.dlpi_name } == 0 {
            return 0; // the main program: its handle would search the global scope
        }
        // SAFETY: as in symbol_near: RTLD_NOLOAD never loads anything.
        let handle = unsafe { libc::dlopen(info.dlpi_name, libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            return 0;
        }
        // SAFETY: a live handle and a NUL-terminated name; then the matching dlclose.
        let sym = unsafe { libc::dlsym(handle, search.name.as_ptr()) };
        // SAFETY: as above.
        unsafe { libc::dlclose(handle) };
        if !sym.is_null() && sym != search.ours {
            search.found = sym;
            return 1;
        }
        0
    }
    let own_base = own_object().map_or(0, |(b, _)| b as usize);
    let mut search = Search {
        name,
        ours,
        own_base,
        found: ptr::null_mut(),
    };
    // SAFETY: visit matches dl_iterate_phdr's callback type and only uses `search`, which
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), ptr::addr_of_mut!(search).cast()) };
    search.found
}

// ---- Installing into the caller's SQLite --------------------------------------------------

static INSTALL: Once = Once::new();

/// When preloaded: installs walstream, as the default VFS, into the SQLite library whose
/// `sqlite3_open_v2` is `real_open_v2` (once per process; later calls return at once).
fn install_if_preloaded(real_open_v2: OpenV2Fn) {
    if !preloaded() {
        return;
    }
    INSTALL.call_once(|| {
        if let Err(msg) = install(real_open_v2) {
            log_with(real_open_v2, &msg);
        }
    });
}

/// `name` from the same library as `sibling` (a function of that library).
fn sibling_symbol(sibling: *const c_void, name: &CStr) -> *mut c_void {
    let s = symbol_near(sibling, name);
    if !s.is_null() {
        return s;
    }
    // The sibling lives in the main program or could not be reopened: search globally.
    // SAFETY: RTLD_NEXT with a NUL-terminated name.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
}

fn install(real_open_v2: OpenV2Fn) -> Result<(), String> {
    let anchor = real_open_v2 as *const c_void;
    let auto_extension = sibling_symbol(anchor, c"sqlite3_auto_extension");
    let cancel = sibling_symbol(anchor, c"sqlite3_cancel_auto_extension");
    let close = sibling_symbol(anchor, c"sqlite3_close");
    if auto_extension.is_null() || cancel.is_null() || close.is_null() {
        return Err(
            "walstream (LD_PRELOAD): this SQLite lacks sqlite3_auto_extension, \
                    sqlite3_cancel_auto_extension or sqlite3_close; nothing is captured"
                .into(),
        );
    }
    // SAFETY: the host's functions of these names, with these C signatures.
    let (auto_extension, cancel, close) = unsafe {
        (
            std::mem::transmute::<*mut c_void, AutoExtFn>(auto_extension),
            std::mem::transmute::<*mut c_void, AutoExtFn>(cancel),
            std::mem::transmute::<*mut c_void, CloseFn>(close),
        )
    };
    use crate::api::EntryFn;
    let entry: EntryFn = bootstrap_entry;
    // SAFETY: sqlite3_auto_extension declares `void(*)(void)` but calls the entry-point
    // signature, which bootstrap_entry has.
    let entry = unsafe { std::mem::transmute::<EntryFn, unsafe extern "C" fn()>(entry) };
    // SAFETY: real SQLite routines with valid arguments; bootstrap_entry lives forever.
    let rc = unsafe { auto_extension(Some(entry)) };
    if rc != SQLITE_OK {
        return Err(format!(
            "walstream (LD_PRELOAD): sqlite3_auto_extension failed: {rc}"
        ));
    }
    set_bootstrap_result(None);
    let mut db: *mut sqlite3 = ptr::null_mut();
    // SAFETY: the real sqlite3_open_v2 on a private in-memory database, default VFS.
    let rc = unsafe {
        real_open_v2(
            c":memory:".as_ptr(),
            &mut db,
            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
            ptr::null(),
        )
    };
    // SAFETY: as above; cancelling an entry that ran, or never ran, is harmless.
    unsafe { cancel(Some(entry)) };
    if !db.is_null() {
        // SAFETY: the connection opened above, used by nothing else.
        unsafe { close(db) };
    }
    match take_bootstrap_result() {
        Some(Ok(())) => Ok(()),
        Some(Err(msg)) => Err(format!(
            "walstream (LD_PRELOAD): {msg}; nothing is captured"
        )),
        None => Err(format!(
            "walstream (LD_PRELOAD): the bootstrap connection did not run the extension \
             (open returned {rc}); nothing is captured"
        )),
    }
}

static BOOTSTRAP_RESULT: Mutex<Option<Result<(), String>>> = Mutex::new(None);

fn set_bootstrap_result(r: Option<Result<(), String>>) {
    if let Ok(mut slot) = BOOTSTRAP_RESULT.lock() {
        *slot = r;
    }
}

fn take_bootstrap_result() -> Option<Result<(), String>> {
    BOOTSTRAP_RESULT.lock().ok().and_then(|mut s| s.take())
}

/// The auto-extension run on the bootstrap connection: the ordinary entry point, with the
/// default VFS forced.
extern "C" fn bootstrap_entry(
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *const sqlite3_api_routines,
) -> c_int {
    guard(SQLITE_ERROR, || {
        let Some(entry) = crate::api::Entry::new(db, pz_err_msg, p_api) else {
            set_bootstrap_result(Some(Err("no routines table".into())));
            return SQLITE_ERROR;
        };
        // The result goes to the slot, not to SQLite: failing here would only fail the
        // bootstrap open, and install() reports it.
        set_bootstrap_result(Some(crate::init(&entry, true)));
        SQLITE_OK
    })
}

/// `sqlite3_log(SQLITE_ERROR, "%s", msg)` through the library of `real_open_v2`.
fn log_with(real_open_v2: OpenV2Fn, msg: &str) {
    let log = sibling_symbol(real_open_v2 as *const c_void, c"sqlite3_log");
    if log.is_null() {
        return;
    }
    let Ok(text) = std::ffi::CString::new(msg.replace('\0', "?")) else {
        return;
    };
    // SAFETY: the host's variadic sqlite3_log; the format consumes one C string.
    unsafe {
        let log = std::mem::transmute::<*mut c_void, LogFn>(log);
        log(SQLITE_ERROR, c"%s".as_ptr(), text.as_ptr());
    }
}
