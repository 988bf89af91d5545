//! roam-sdk: write stateful WebAssembly workloads for [Roam](https://example.invalid/roam).
//!
//! A workload is a plain Rust type whose fields are its state. Roam keeps that
//! state alive while it moves the workload between hosts: the fields, the
//! heap behind them, pending [`timers`], the private [`kv`] store and queued
//! messages all travel with it.
//!
//! ```
//! use roam_sdk::{Request, Response, Workload};
//!
//! #[derive(Default)]
//! struct Counter {
//!     hits: u64,
//! }
//!
//! impl Workload for Counter {
//!     fn handle(&mut self, _req: Request) -> Response {
//!         self.hits += 1;
//!         Response::text(200, format!("{}\n", self.hits))
//!     }
//! }
//!
//! roam_sdk::export!(Counter);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip1 --release` and run with
//! `roam run target/wasm32-wasip1/release/counter.wasm --listen 127.0.0.1:8080`.
//! The ABI underneath is documented in `docs/abi.md`; other languages can
//! target it directly.
#![deny(missing_docs)]

mod sys;

pub mod host;
pub mod http;
pub mod kv;
pub mod logging;
pub mod messages;
pub mod random;
pub mod time;
pub mod timers;

#[doc(hidden)]
pub mod __private;

pub use http::{Request, Response};

/// The Roam ABI version this SDK implements.
///
/// ```
/// assert_eq!(roam_sdk::ABI_VERSION, 1);
/// ```
pub const ABI_VERSION: i32 = 1;

/// An error returned by a host function.
///
/// ```
/// use roam_sdk::Error;
/// assert_eq!(Error::from_code(-3), Error::Limit);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No such key, timer or destination.
    NotFound,
    /// A length is over its bound.
    TooLarge,
    /// A quota is used up.
    Limit,
    /// The capability is not granted to this workload.
    Denied,
    /// An argument is invalid.
    Invalid,
}

impl Error {
    /// The error for a negative ABI return code.
    ///
    /// ```
    /// assert_eq!(roam_sdk::Error::from_code(-4), roam_sdk::Error::Denied);
    /// ```
    pub fn from_code(code: i64) -> Error {
        match code {
            -1 => Error::NotFound,
            -2 => Error::TooLarge,
            -3 => Error::Limit,
            -4 => Error::Denied,
            _ => Error::Invalid,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::NotFound => "not found",
            Error::TooLarge => "too large",
            Error::Limit => "quota used up",
            Error::Denied => "not granted to this workload",
            Error::Invalid => "invalid argument",
        })
    }
}

impl std::error::Error for Error {}

/// Where a workload came from and where it is now, given to
/// [`Workload::on_restore`] after a move.
///
/// ```
/// fn on_restore(moved: roam_sdk::Moved) {
///     if moved.site != moved.from_site {
///         log::info!("now serving from {}", moved.site);
///     }
/// }
/// on_restore(roam_sdk::Moved::default());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Host it ran on before.
    pub from_host: String,
    /// Site it ran on before.
    pub from_site: String,
    /// Host it runs on now.
    pub host: String,
    /// Site it runs on now.
    pub site: String,
    /// How it got here.
    pub how: How,
}

/// How a workload came to run where [`Workload::on_restore`] is called.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum How {
    /// Moved by a live or stop-and-copy migration, with its whole state
    /// (also what hosts that do not say report).
    #[default]
    Migrated,
    /// Its host died and its standby took over, with the last state the
    /// standby acknowledged (`durability = async` may have lost the
    /// events after it; `sync` lost none whose answer was sent).
    FailedOver,
    /// Captured and restored in place (`roam run --roundtrip-snapshots`).
    Restored,
}

impl How {
    /// The word restore info carries (`docs/abi.md`).
    pub fn parse(word: &str) -> How {
        match word {
            "failover" => How::FailedOver,
            "restore" => How::Restored,
            _ => How::Migrated,
        }
    }
}

/// A workload: its fields are its state, its methods its entry points.
///
/// Only [`Workload::handle`] is required. Export the type with [`export!`].
///
/// ```
/// use roam_sdk::{Request, Response, Workload, timers::TimerId};
///
/// #[derive(Default)]
/// struct Ticker {
///     ticks: u32,
/// }
///
/// impl Workload for Ticker {
///     fn init(&mut self) {
///         roam_sdk::timers::set(std::time::Duration::from_secs(1), b"tick").ok();
///     }
///     fn handle(&mut self, _req: Request) -> Response {
///         Response::text(200, self.ticks.to_string())
///     }
///     fn on_timer(&mut self, _id: TimerId, _payload: &[u8]) {
///         self.ticks += 1;
///         roam_sdk::timers::set(std::time::Duration::from_secs(1), b"tick").ok();
///     }
/// }
/// ```
pub trait Workload: Default + 'static {
    /// Called once, on first boot — never again after a restore.
    fn init(&mut self) {}

    /// Handle an HTTP-shaped request.
    fn handle(&mut self, req: Request) -> Response;

    /// A message from another workload. The host keeps each message the
    /// sender sent until the receiver's host took it, and the receiver
    /// drops a resend, so it is handled once.
    fn on_message(&mut self, from: &str, body: &[u8]) {
        let _ = (from, body);
    }

    /// A message this workload sent came back: its destination does not
    /// exist ([`Error::NotFound`]). The default logs it.
    fn on_undeliverable(&mut self, message: messages::Undeliverable) {
        log::warn!(
            "message to `{}` not delivered: {}",
            message.to,
            message.error
        );
    }

    /// A timer set with [`timers::set`] fired.
    fn on_timer(&mut self, id: timers::TimerId, payload: &[u8]) {
        let _ = (id, payload);
    }

    /// The workload was restored on another host (or the same one, when
    /// `roam run --roundtrip-snapshots` exercises the path).
    fn on_restore(&mut self, moved: Moved) {
        let _ = moved;
    }
}

/// A workload whose state survives a rolling upgrade to another version
/// of itself (`roam deploy` with a new module): the running version hands
/// its state over as bytes, the new version takes them. Export it with
/// `export!(Type, upgrade)`, in both versions.
///
/// Key-value data, timers and queued messages carry over whatever the
/// versions do; these two cover what lives in the workload's own fields.
/// Give the bytes a format the next version can read — and the previous
/// one, for `roam rollout undo` — for example serde with a version field.
///
/// ```
/// use roam_sdk::{Request, Response, Upgrade, Workload};
///
/// #[derive(Default)]
/// struct Visits {
///     count: u64,
/// }
///
/// impl Workload for Visits {
///     fn handle(&mut self, _req: Request) -> Response {
///         self.count += 1;
///         Response::text(200, self.count.to_string())
///     }
/// }
///
/// impl Upgrade for Visits {
///     fn export_state(&mut self) -> Vec<u8> {
///         self.count.to_le_bytes().to_vec()
///     }
///     fn import_state(&mut self, state: &[u8]) -> Result<(), String> {
///         let bytes: [u8; 8] = state.try_into().map_err(|_| "expected 8 bytes".to_string())?;
///         self.count = u64::from_le_bytes(bytes);
///         Ok(())
///     }
/// }
/// roam_sdk::export!(Visits, upgrade);
/// ```
pub trait Upgrade: Workload {
    /// Called on the running version when a new one replaces it, at a
    /// safe point, with requests held meanwhile: its state as bytes.
    fn export_state(&mut self) -> Vec<u8>;

    /// Called on the new version instead of [`Workload::init`]: build its
    /// state from what the old version's [`Upgrade::export_state`] gave.
    /// An `Err` refuses the upgrade; the old version serves on, and the
    /// rollout stops with this reason.
    fn import_state(&mut self, state: &[u8]) -> Result<(), String>;
}

/// Export a [`Workload`] type as the module's Roam entry points.
///
/// Generates `roam_abi_version`, `roam_alloc`, `roam_init`, `roam_http`,
/// `roam_message`, `roam_timer` and `roam_restored`; with `upgrade`, also
/// the upgrade hooks `roam_upgrade_export` and `roam_upgrade_import` of an
/// [`Upgrade`] type. Use it once per crate (a `cdylib`).
///
/// ```
/// #[derive(Default)]
/// struct Hello;
/// impl roam_sdk::Workload for Hello {
///     fn handle(&mut self, _req: roam_sdk::Request) -> roam_sdk::Response {
///         roam_sdk::Response::text(200, "hello")
///     }
/// }
/// roam_sdk::export!(Hello);
/// ```
#[macro_export]
macro_rules! export {
    ($ty:ty, upgrade) => {
        $crate::export!(@entries $ty;
            #[unsafe(no_mangle)]
            extern "C" fn roam_upgrade_export() -> i64 {
                $crate::__private::upgrade_export(|| with(|w| $crate::Upgrade::export_state(w)))
            }

            #[unsafe(no_mangle)]
            extern "C" fn roam_upgrade_import(ptr: i32, len: i32) -> i64 {
                $crate::logging::init();
                $crate::__private::upgrade_import(ptr, len, |state| {
                    with(|w| $crate::Upgrade::import_state(w, state))
                })
            }
        );
    };
    ($ty:ty) => {
        $crate::export!(@entries $ty;);
    };
    (@entries $ty:ty; $($extra:item)*) => {
        const _: () = {
            ::std::thread_local! {
                static WORKLOAD: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            fn with<R>(f: impl FnOnce(&mut $ty) -> R) -> R {
                WORKLOAD.with(|w| {
                    let mut w = w.borrow_mut();
                    f(w.get_or_insert_with(<$ty as ::std::default::Default>::default))
                })
            }

            #[unsafe(no_mangle)]
            extern "C" fn roam_abi_version() -> i32 {
                $crate::ABI_VERSION
            }

            #[unsafe(no_mangle)]
            extern "C" fn roam_alloc(len: i32) -> i32 {
                $crate::__private::alloc(len)
            }

            #[unsafe(no_mangle)]
            extern "C" fn roam_init() {
                $crate::logging::init();
                with(|w| $crate::Workload::init(w))
            }

            #[unsafe(no_mangle)]
            extern "C" fn roam_http(ptr: i32, len: i32) -> i64 {
                $crate::__private::http(ptr, len, |req| with(|w| $crate::Workload::handle(w, req)))
            }

            #[unsafe(no_mangle)]
            extern "C" fn roam_message(ptr: i32, len: i32) {
                $crate::__private::message(
                    ptr,
                    len,
                    |from, body| with(|w| $crate::Workload::on_message(w, from, body)),
                    |message| with(|w| $crate::Workload::on_undeliverable(w, message)),
                )
            }

            #[unsafe(no_mangle)]
            extern "C" fn roam_timer(id: i64, ptr: i32, len: i32) {
                $crate::__private::timer(id, ptr, len, |id, payload| {
                    with(|w| $crate::Workload::on_timer(w, id, payload))
                })
            }

            #[unsafe(no_mangle)]
            extern "C" fn roam_restored(ptr: i32, len: i32) {
                $crate::__private::restored(ptr, len, |moved| {
                    with(|w| $crate::Workload::on_restore(w, moved))
                })
            }

            $($extra)*
        };
    };
}
