//! Test support shared by Roam's test suites: the paths of guest programs
//! built for `wasm32-wasip1` by this package's `build.rs`.

/// Paths of the built guest modules.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

    /// A foreign-toolchain artifact, or a failure that says how to get it.
    #[allow(
        clippy::panic,
        reason = "used by tests, where a panic is the failure report"
    )]
    pub fn require(path: Option<&'static str>, what: &str) -> &'static str {
        match path {
            Some(p) => p,
            None => panic!(
                "the {what} test program was not built because its toolchain is missing; run `scripts/setup` (installs clang, wasi-libc, libc++ for wasm32 and Go)"
            ),
        }
    }
}
