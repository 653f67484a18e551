//! `ten`: one binary that replaces nginx, a process supervisor and a basic monitoring stack.

mod alloc;
mod client;
mod server;
mod wire;

use std::process::ExitCode;

/// mimalloc (src/alloc.rs).
#[global_allocator]
static GLOBAL: alloc::Mimalloc = alloc::Mimalloc;

use clap::Parser;

/// Commit arena memory as it is used rather than up front (`MIMALLOC_ARENA_EAGER_COMMIT=0`):
/// ~12 MB less resident memory for an idle `ten serve`, at no measured cost per request
/// (BENCHMARKS.md). mimalloc reads the option when it reserves its first arena, at the first
/// allocation, which happens before `main`: so this runs as an ELF constructor, before the
/// Rust runtime starts (the same mechanism as the `ctor` crate). It sets the *default*, so
/// `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still wins.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
mod mimalloc_options {
    // mimalloc's C API (libmimalloc-sys links the library).
    extern "C" {
        fn mi_option_set_default(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_arena_eager_commit` in mimalloc v2's `mi_option_e` (Cargo.toml selects v2).
    const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

    extern "C" fn set() {
        // SAFETY: a plain option setter of the linked allocator; nothing else runs yet.
        unsafe { mi_option_set_default(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }

    #[used]
    #[link_section = ".init_array.00101"]
    static SET: extern "C" fn() = set;
}

fn main() -> ExitCode {
    let cli = client::cli::Cli::parse();
    match client::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
