//! Link options of the extension.
//!
//! On GNU/Linux the extension's relative relocations are packed (`DT_RELR`, glibc 2.36 and
//! binutils 2.38 or later): the dynamic loader no longer reads 740 KB of `.rela.dyn` at load,
//! which is resident memory in every host process (docs/BENCHMARKS.md, "Where the memory goes").
//! An older linker ignores the option with a warning; a host whose glibc is older than the
//! build machine's refuses the library (build on the oldest glibc you deploy to).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
