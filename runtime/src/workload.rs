//! A workload: an instance of a module that follows the Roam ABI, driven
//! through its entry points.
//!
//! [`Workload`] turns host events into guest calls: an HTTP-shaped request
//! into `roam_http`, a queued message into `roam_message`, a due timer into
//! `roam_timer`, a move into `roam_restored`. Data goes into guest memory
//! through the guest's own `roam_alloc` and comes back as a `(ptr, len)` the
//! host bounds-checks and decodes as untrusted input. A workload processes
//! one event at a time; between events it is at a safe point and can be
//! captured.

use std::time::Duration;

use crate::Val;
use crate::abi::codec::{self, MoveKind, Request, Response};
use crate::abi::{self, InboundMessage, MessageId, OutboundMessage, Place, codes};
use crate::error::{CallError, InstantiateError};
use crate::instance::{Instance, InstanceConfig};
use crate::module::Module;
use crate::runtime::Runtime;
use crate::snapshot::Snapshot;

/// An instance that speaks the Roam ABI.
#[derive(Debug)]
pub struct Workload {
    instance: Instance,
    /// The timer or message whose handler is running (still set after it
    /// failed), so a rollback can leave that one event out.
    current: Option<Event>,
}

/// A timer firing or a message delivery, the events a workload's state
/// holds until their handler returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The timer with this id.
    Timer(u64),
    /// A message from a workload.
    Message(InboundMessage),
}

/// Why a request could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The guest failed (trap, CPU budget, memory cap).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The guest broke the ABI (bad pointer, malformed response).
    #[error("workload broke the ABI: {0}")]
    Abi(String),
    /// The workload has no handler for this kind of event.
    #[error("workload exports no `{0}` handler")]
    NoHandler(&'static str),
}

fn abi_err(message: impl Into<String>) -> InstantiateError {
    InstantiateError::Abi(message.into())
}

impl Workload {
    /// Instantiate and boot: start function, `_initialize`, ABI check, `roam_init`.
    pub async fn start(
        rt: &Runtime,
        module: &Module,
        config: InstanceConfig,
    ) -> Result<Workload, InstantiateError> {
        check_exports(module, &config.name)?;
        let instance = rt.instantiate(module, config).await?;
        let mut workload = Workload {
            instance,
            current: None,
        };
        workload.check_version().await?;
        if workload
            .instance
            .module()
            .exports_function(abi::EXPORT_INIT)
        {
            workload
                .instance
                .call(abi::EXPORT_INIT, &[])
                .await
                .map_err(InstantiateError::Init)?;
        }
        Ok(workload)
    }

    /// Restore from a full snapshot. With `moved_from`, the workload's
    /// `roam_restored` hook is told where it came from and where it is now.
    pub async fn restore(
        rt: &Runtime,
        module: &Module,
        config: InstanceConfig,
        snapshot: &Snapshot,
        moved_from: Option<(&Place, MoveKind)>,
    ) -> Result<Workload, InstantiateError> {
        check_exports(module, &config.name)?;
        let instance = rt.restore(module, config, snapshot).await?;
        Workload::resume(instance, moved_from).await
    }

    /// Turn an instance that holds a workload's restored state (a full
    /// snapshot applied, perhaps followed by deltas) into a running workload:
    /// check its ABI version and, with `moved_from`, call its
    /// `roam_restored` hook.
    pub async fn resume(
        instance: Instance,
        moved_from: Option<(&Place, MoveKind)>,
    ) -> Result<Workload, InstantiateError> {
        check_exports(instance.module(), &instance.config().name)?;
        let here = instance.config().info.clone();
        let mut workload = Workload {
            instance,
            current: None,
        };
        workload.check_version().await?;
        if let Some((from, how)) = moved_from
            && workload
                .instance
                .module()
                .exports_function(abi::EXPORT_RESTORED)
        {
            let info = codec::encode_restored(&from.host, &from.site, &here.host, &here.site, how);
            workload
                .call_with_bytes(abi::EXPORT_RESTORED, &info, &[])
                .await
                .map_err(|e| match e {
                    HandleError::Call(c) => InstantiateError::Init(c),
                    other => abi_err(other.to_string()),
                })?;
        }
        Ok(workload)
    }

    /// Whether this version can hand its state to another through the
    /// upgrade hooks (it exports `roam_upgrade_export`).
    pub fn exports_state(&self) -> bool {
        self.instance
            .module()
            .exports_function(abi::EXPORT_UPGRADE_EXPORT)
    }

    /// The state this version hands to the next through its upgrade hook
    /// (`roam_upgrade_export`), copied out of guest memory.
    pub async fn export_state(&mut self) -> Result<Vec<u8>, HandleError> {
        if !self.exports_state() {
            return Err(HandleError::NoHandler(abi::EXPORT_UPGRADE_EXPORT));
        }
        let packed = match self
            .instance
            .call(abi::EXPORT_UPGRADE_EXPORT, &[])
            .await?
            .as_slice()
        {
            [Val::I64(v)] => *v as u64,
            _ => {
                return Err(HandleError::Abi(
                    "`roam_upgrade_export` must return an i64".into(),
                ));
            }
        };
        let (ptr, len) = ((packed >> 32) as i32, packed as u32 as i32);
        let memory = self.instance.memory_data_mut();
        let range = abi_range(ptr, len, memory.len()).ok_or_else(|| {
            HandleError::Abi(format!(
                "`roam_upgrade_export` returned buffer {ptr:#x}+{len}, outside guest memory"
            ))
        })?;
        Ok(memory[range].to_vec())
    }

    /// Start `module` as the next version of a running workload, in place
    /// of an instance whose host-side state is `host` (key-value data,
    /// timers, messages, clock, log cursor: always carried over). Its
    /// linear memory: with `Some(state)`, what the old version's
    /// `roam_upgrade_export` gave, handed to this version's
    /// `roam_upgrade_import` (which must exist); with `None` it starts
    /// anew, `roam_init` included. Nothing of the old instance is touched:
    /// on error the old version can serve on.
    pub async fn upgrade(
        rt: &Runtime,
        module: &Module,
        config: InstanceConfig,
        host: &[crate::snapshot::HostSection],
        state: Option<&[u8]>,
    ) -> Result<Workload, InstantiateError> {
        check_exports(module, &config.name)?;
        let name = config.name.clone();
        if state.is_some() && !module.exports_function(abi::EXPORT_UPGRADE_IMPORT) {
            return Err(abi_err(format!(
                "the new version of `{name}` exports no `{}`: it cannot take the running version's state (add the upgrade hooks, docs/abi.md, or deploy with --discard-state)",
                abi::EXPORT_UPGRADE_IMPORT
            )));
        }
        let instance = rt.instantiate(module, config).await?;
        let mut workload = Workload {
            instance,
            current: None,
        };
        workload.check_version().await?;
        workload
            .instance
            .adopt_host_sections(host)
            .map_err(|e| abi_err(format!("`{name}`: the old version's host state: {e}")))?;
        let Some(state) = state else {
            if module.exports_function(abi::EXPORT_INIT) {
                workload
                    .instance
                    .call(abi::EXPORT_INIT, &[])
                    .await
                    .map_err(InstantiateError::Init)?;
            }
            return Ok(workload);
        };
        let answer = workload
            .call_with_bytes(abi::EXPORT_UPGRADE_IMPORT, state, &[])
            .await
            .map_err(|e| match e {
                HandleError::Call(c) => InstantiateError::Init(c),
                other => abi_err(other.to_string()),
            })?;
        let packed = match answer.as_slice() {
            [Val::I64(v)] => *v as u64,
            _ => {
                return Err(abi_err(format!(
                    "`{name}`: `roam_upgrade_import` must return an i64"
                )));
            }
        };
        if packed != 0 {
            let (ptr, len) = ((packed >> 32) as i32, packed as u32 as i32);
            let memory = workload.instance.memory_data_mut();
            let reason = abi_range(ptr, len.min(1024), memory.len())
                .map(|r| String::from_utf8_lossy(&memory[r]).into_owned())
                .unwrap_or_else(|| "no reason given".into());
            return Err(abi_err(format!(
                "the new version of `{name}` refused the running version's state: {reason}"
            )));
        }
        Ok(workload)
    }

    async fn check_version(&mut self) -> Result<(), InstantiateError> {
        let name = self.instance.config().name.clone();
        let version = match self.instance.call(abi::EXPORT_ABI_VERSION, &[]).await {
            Ok(v) => match v.as_slice() {
                [Val::I32(v)] => *v,
                _ => {
                    return Err(abi_err(format!(
                        "`{name}`: `roam_abi_version` must return an i32"
                    )));
                }
            },
            Err(e) => return Err(InstantiateError::Init(e)),
        };
        if version != abi::ABI_VERSION {
            return Err(abi_err(format!(
                "workload `{name}` was built for Roam ABI v{version}, but this host implements ABI v{}; rebuild it against a matching roam-sdk",
                abi::ABI_VERSION
            )));
        }
        Ok(())
    }

    /// The instance underneath (for capture, logs, limits).
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The instance underneath, mutable.
    pub fn instance_mut(&mut self) -> &mut Instance {
        &mut self.instance
    }

    /// Consume the workload, returning its instance.
    pub fn into_instance(self) -> Instance {
        self.instance
    }

    /// Copy `bytes` into guest memory (allocated by the guest) and call
    /// `export(extra.., ptr, len)`.
    async fn call_with_bytes(
        &mut self,
        export: &'static str,
        bytes: &[u8],
        extra: &[Val],
    ) -> Result<Vec<Val>, HandleError> {
        let len =
            i32::try_from(bytes.len()).map_err(|_| HandleError::Abi("input over 2 GiB".into()))?;
        let ptr = match self
            .instance
            .call(abi::EXPORT_ALLOC, &[Val::I32(len)])
            .await?
            .as_slice()
        {
            [Val::I32(p)] => *p,
            _ => return Err(HandleError::Abi("`roam_alloc` must return an i32".into())),
        };
        if ptr == 0 && len > 0 {
            return Err(HandleError::Abi(format!(
                "`roam_alloc({len})` failed (returned 0)"
            )));
        }
        let memory = self.instance.memory_data_mut();
        let range = abi_range(ptr, len, memory.len()).ok_or_else(|| {
            HandleError::Abi(format!(
                "`roam_alloc` returned {ptr:#x}, outside guest memory"
            ))
        })?;
        memory[range].copy_from_slice(bytes);
        let mut args = extra.to_vec();
        args.push(Val::I32(ptr));
        args.push(Val::I32(len));
        Ok(self.instance.call(export, &args).await?)
    }

    /// Handle an HTTP-shaped request.
    pub async fn http(&mut self, request: &Request) -> Result<Response, HandleError> {
        if !self.instance.module().exports_function(abi::EXPORT_HTTP) {
            return Err(HandleError::NoHandler(abi::EXPORT_HTTP));
        }
        let max_body = self.instance.abi().quotas.max_body;
        if request.body.len() > max_body {
            return Err(HandleError::Abi(format!(
                "request body of {} bytes is over the limit of {max_body}",
                request.body.len()
            )));
        }
        let packed = match self
            .call_with_bytes(abi::EXPORT_HTTP, &codec::encode_request(request), &[])
            .await?
            .as_slice()
        {
            [Val::I64(v)] => *v as u64,
            _ => return Err(HandleError::Abi("`roam_http` must return an i64".into())),
        };
        let (ptr, len) = ((packed >> 32) as i32, packed as u32 as i32);
        let memory = self.instance.memory_data_mut();
        let range = abi_range(ptr, len, memory.len()).ok_or_else(|| {
            HandleError::Abi(format!(
                "`roam_http` returned buffer {ptr:#x}+{len}, outside guest memory"
            ))
        })?;
        codec::decode_response(&memory[range], max_body).map_err(|e| {
            HandleError::Abi(format!("`roam_http` returned a malformed response: {e}"))
        })
    }

    /// Queue a message for this workload (without an id: never
    /// deduplicated). `Err(LIMIT)` when its inbox is full.
    pub fn enqueue(&mut self, from: &str, body: Vec<u8>) -> Result<(), i32> {
        self.take(from, MessageId::default(), body).map(|_| ())
    }

    /// Queue message `id` from `from` unless this workload took it before
    /// (`Ok(false)`: a resend, dropped; acknowledge it all the same).
    /// `Err(LIMIT)` when its inbox is full, `Err(TOO_LARGE)` over the quota.
    pub fn take(&mut self, from: &str, id: MessageId, body: Vec<u8>) -> Result<bool, i32> {
        let abi = self.instance.abi_mut();
        if body.len() > abi.quotas.max_message || from.len() > 256 {
            return Err(codes::TOO_LARGE);
        }
        if id.stream != 0
            && abi
                .received
                .get(&(from.to_string(), id.stream))
                .is_some_and(|(last, _)| id.seq <= *last)
        {
            return Ok(false);
        }
        if abi.inbox.len() >= abi.quotas.max_queued_messages {
            return Err(codes::LIMIT);
        }
        abi.take_message(from, id);
        abi.inbox.push_back(InboundMessage {
            from: from.to_string(),
            body,
        });
        Ok(true)
    }

    /// Deliver queued messages, oldest first. A message leaves the queue only
    /// after its handler returned, so a failure (or a move) never loses it.
    pub async fn deliver_messages(&mut self) -> Result<usize, HandleError> {
        let mut delivered = 0;
        while self.deliver_one().await? {
            delivered += 1;
        }
        Ok(delivered)
    }

    /// Deliver the oldest queued message, if any (`Ok(false)`: none).
    pub async fn deliver_one(&mut self) -> Result<bool, HandleError> {
        let Some(m) = self.instance.abi().inbox.front().cloned() else {
            return Ok(false);
        };
        if !self.instance.module().exports_function(abi::EXPORT_MESSAGE) {
            return Err(HandleError::NoHandler(abi::EXPORT_MESSAGE));
        }
        let bytes = codec::encode_message(&m.from, &m.body);
        self.current = Some(Event::Message(m));
        self.call_with_bytes(abi::EXPORT_MESSAGE, &bytes, &[])
            .await?;
        self.current = None;
        self.instance.abi_mut().inbox.pop_front();
        Ok(true)
    }

    /// The timer or message whose handler failed last (taken).
    pub fn take_failed_event(&mut self) -> Option<Event> {
        self.current.take()
    }

    /// Leave out an event that failed: a restored state still holds it (a
    /// queued message, a pending timer) and would run it again.
    pub fn forget(&mut self, event: &Event) {
        let abi = self.instance.abi_mut();
        match event {
            Event::Timer(id) => {
                abi.timers.remove(id);
            }
            Event::Message(m) => {
                if let Some(at) = abi.inbox.iter().position(|q| q == m) {
                    abi.inbox.remove(at);
                }
            }
        }
    }

    /// Time until the earliest pending timer is due (zero if overdue).
    pub fn next_timer_in(&self) -> Option<Duration> {
        let (_, due) = self.instance.abi().next_timer_due()?;
        Some(Duration::from_nanos(
            due.saturating_sub(self.instance.monotonic_now()),
        ))
    }

    /// Fire every timer that is due, earliest first.
    pub async fn fire_due_timers(&mut self) -> Result<usize, HandleError> {
        let mut fired = 0;
        // Only timers due when this call began: a handler that sets a new
        // zero-delay timer (a long job in steps) must let requests and
        // messages in between its steps.
        let now = self.instance.monotonic_now();
        let mut due_ids: Vec<(u64, u64)> = self
            .instance
            .abi()
            .timers
            .iter()
            .filter(|(_, t)| t.due_ns <= now)
            .map(|(id, t)| (t.due_ns, *id))
            .collect();
        due_ids.sort_unstable();
        for (_, id) in due_ids {
            if !self.instance.module().exports_function(abi::EXPORT_TIMER) {
                return Err(HandleError::NoHandler(abi::EXPORT_TIMER));
            }
            // An earlier handler may have cancelled it.
            let Some(timer) = self.instance.abi_mut().timers.remove(&id) else {
                continue;
            };
            self.current = Some(Event::Timer(id));
            self.call_with_bytes(abi::EXPORT_TIMER, &timer.payload, &[Val::I64(id as i64)])
                .await?;
            self.current = None;
            fired += 1;
        }
        Ok(fired)
    }

    /// Messages the workload sent since the last call, for the host to
    /// route, taken out of its outbox (a host that keeps them until they
    /// are acknowledged reads [`AbiState::outbox`] instead).
    ///
    /// [`AbiState::outbox`]: crate::abi::AbiState::outbox
    pub fn take_outbox(&mut self) -> Vec<OutboundMessage> {
        self.instance.abi_mut().outbox.drain(..).collect()
    }
}

/// The exports every Roam workload must have.
fn check_exports(module: &Module, name: &str) -> Result<(), InstantiateError> {
    for export in [abi::EXPORT_ABI_VERSION, abi::EXPORT_ALLOC] {
        if !module.exports_function(export) {
            return Err(abi_err(format!(
                "module for workload `{name}` exports no `{export}` function: it is not a Roam workload (build it with roam-sdk, or see docs/abi.md)"
            )));
        }
    }
    if !module.exports_memory("memory") {
        return Err(abi_err(format!(
            "module for workload `{name}` exports no `memory`: the Roam ABI passes data through it"
        )));
    }
    Ok(())
}

fn abi_range(ptr: i32, len: i32, size: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= size).then_some(start..end)
}
