//! walstream's SQLite loadable extension (`libwalstream.so`).
//!
//! Loading it registers the `walstream` VFS, a shim over the default VFS that reports the
//! moments a WAL transaction becomes visible to [`walstream::capture`], and the SQL function
//! `walstream_status()` on the loading connection and on every connection opened later.
//! Set `WALSTREAM_DEFAULT_VFS=1` to make `walstream` the default VFS.
//!
//! All `unsafe` code lives in two modules: [`api`] (calls through SQLite's routines table) and
//! [`vfs`] (the VFS and file trampolines). This file has none.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

#[allow(unsafe_code)]
mod api;
#[allow(unsafe_code)]
mod preload;
#[allow(unsafe_code)]
mod vfs;

use std::ffi::{c_char, c_int};
use std::sync::Once;

use libsqlite3_sys::{sqlite3, sqlite3_api_routines, SQLITE_ERROR, SQLITE_OK, SQLITE_WARNING};

/// SQLite 3.32.0: the first release with `sqlite3_database_file_object`, the newest routine
/// the extension uses.
const MIN_SQLITE_VERSION: c_int = 3_032_000;

/// What a successful entry point returns so that SQLite never unloads the library: the VFS
/// must outlive the connection that loaded it (`SQLITE_OK_LOAD_PERMANENTLY`, SQLite 3.14+).
const OK_LOAD_PERMANENTLY: c_int = libsqlite3_sys::SQLITE_OK_LOAD_PERMANENTLY;

/// Environment variable: `1`, `true` or `yes` makes `walstream` the default VFS.
const DEFAULT_VFS_ENV: &str = "WALSTREAM_DEFAULT_VFS";

/// The entry point SQLite derives from the file name `libwalstream.so`.
#[allow(unsafe_code)] // `no_mangle` only: the function body has no unsafe code.
#[no_mangle]
pub extern "C" fn sqlite3_walstream_init(
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *const sqlite3_api_routines,
) -> c_int {
    api::guard(SQLITE_ERROR, || {
        let Some(entry) = api::Entry::new(db, pz_err_msg, p_api) else {
            return SQLITE_ERROR;
        };
        match init(&entry, false) {
            Ok(()) => OK_LOAD_PERMANENTLY,
            Err(msg) => {
                entry.set_error(&msg);
                SQLITE_ERROR
            }
        }
    })
}

/// Installs walstream through `entry`'s routines table; `force_default` makes it the default
/// VFS whatever the environment says (the LD_PRELOAD drop-in).
fn init(entry: &api::Entry, force_default: bool) -> Result<(), String> {
    let version = entry.libversion_number();
    if version < MIN_SQLITE_VERSION {
        return Err(format!(
            "walstream needs SQLite 3.32.0 or later; this is {}.{}.{}",
            version / 1_000_000,
            version / 1000 % 1000,
            version % 1000
        ));
    }
    entry.install()?;
    install_panic_hook();
    vfs::register(force_default || default_vfs_requested())?;
    entry.register_status_function()?;
    api::register_auto_extension(on_new_connection)
}

/// Auto-extension: registers `walstream_status()` on each connection opened after loading.
/// Never fails the application's open: a connection without the status function (SQLite out of
/// memory, say) still works, and capture does not depend on it; the failure goes to SQLite's
/// log. (SQLite's pagerfault.test injects exactly that out-of-memory error.)
extern "C" fn on_new_connection(
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *const sqlite3_api_routines,
) -> c_int {
    api::guard(SQLITE_OK, || {
        let Some(entry) = api::Entry::new(db, pz_err_msg, p_api) else {
            return SQLITE_OK;
        };
        if let Err(msg) = entry.register_status_function() {
            api::log(
                SQLITE_WARNING,
                &format!("{msg}; this connection has no walstream_status()"),
            );
        }
        SQLITE_OK
    })
}

fn default_vfs_requested() -> bool {
    std::env::var(DEFAULT_VFS_ENV).is_ok_and(|v| {
        let v = v.trim();
        v == "1" || v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("yes")
    })
}

/// Panics inside the extension are caught at every `extern "C"` boundary; their message goes
/// to `sqlite3_log` instead of the default hook's stderr (the host owns stderr). The hook
/// belongs to this library's own copy of Rust's std, so a Rust host's hook is unaffected.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            api::log(libsqlite3_sys::SQLITE_INTERNAL, &format!("panic: {info}"));
        }));
    });
}
