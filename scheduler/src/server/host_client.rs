//! Every call the scheduler makes to a host goes through [`HostClient`]:
//! paths from `roam_proto::paths`, the host's secret, and typed errors
//! (which say whether the host answered, refused the connection, or was
//! silent — the verdict in `crate::verdict` depends on the difference).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use roam_proto::paths::{self, BadSegment, MigrationStep};
use roam_proto::{
    CommitOutcome, MigrationDecision, MigrationStatus, MigrationStatusQuery, PrepareMigration,
    Promote, SendMigration, StandbyTarget, StartInstance, StartStandby, StopQuery, headers,
};

use roam_tls::{Transport, answer};

use crate::verdict::Answer;

/// Longest wait for a host's answer to a status question: it is asked on
/// every reconcile round while the scheduler is unsure of a migration, and
/// a host cut off by a partition must not hold the round up for the
/// client's whole timeout.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a host is reached, and the secret it expects.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    pub(super) name: String,
    /// The URL the host registered (what other hosts are given).
    pub(super) url: String,
    /// What the scheduler dials: over TLS `https://NAME.host.roam:PORT`, so
    /// the host's certificate must name it (`roam_tls::transport`).
    pub(super) base: String,
    pub(super) secret: String,
}

/// Why a call to a host did not succeed.
#[derive(Debug, thiserror::Error)]
pub(super) enum HostError {
    /// The scheduler does not know the host (or it vanished).
    #[error("host `{0}` is unknown")]
    Unknown(String),
    /// A name that cannot be a path segment.
    #[error(transparent)]
    Path(#[from] BadSegment),
    /// The request did not get an answer.
    #[error("host `{host}` unreachable: {error}")]
    Unreachable {
        host: String,
        error: reqwest::Error,
        /// The connection was refused: nothing listens at the address.
        refused: bool,
    },
    /// The host answered with an error status.
    #[error("host `{host}` answered {status}: {body}")]
    Answered {
        host: String,
        status: StatusCode,
        body: String,
    },
    /// This replica does not lead (any more): it calls no host.
    #[error("not calling host `{0}`: this scheduler replica does not lead")]
    NotLeader(String),
    /// The host refused the call's term: it has seen a newer leader's
    /// (this replica was deposed between its leadership check and the
    /// call). Not a status of the call itself: an abort refused with 409
    /// means committed, this does not.
    #[error("host `{host}` refused term {term}: it has seen term {newest}")]
    StaleTerm {
        host: String,
        term: u64,
        newest: u64,
    },
    /// The host's answer could not be read.
    #[error("host `{host}` gave a bad answer: {error}")]
    BadAnswer {
        host: String,
        error: roam_tls::answer::AnswerError,
    },
}

/// The most read of a host's short answers (an upgrade's, a commit's).
const SMALL_ANSWER: usize = 64 << 10;

/// A host's answer read by `reading`, its failure named after the host.
async fn read<T>(
    to: &Endpoint,
    reading: impl std::future::Future<Output = Result<T, answer::AnswerError>>,
) -> Result<T, HostError> {
    reading.await.map_err(|error| HostError::BadAnswer {
        host: to.name.clone(),
        error,
    })
}

impl HostError {
    /// The status a host answered with, if it answered.
    pub(super) fn status(&self) -> Option<StatusCode> {
        match self {
            HostError::Answered { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Whether `error` is a refused connection (walks the source chain down
/// to the I/O error).
fn refused(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = e.source();
    }
    false
}

/// What a stop asks.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stop {
    /// Whatever copy runs there.
    Any,
    /// Only a copy still below this generation.
    Below(u64),
}

/// The scheduler's client for hosts' control APIs.
pub(super) struct HostClient {
    /// Calls with an overall timeout.
    http: reqwest::Client,
    /// Without an overall timeout, for a migration's progress stream.
    stream: reqwest::Client,
    /// The term control calls carry; none is made while this replica does
    /// not lead.
    leadership: Arc<super::leadership::Leadership>,
    /// Test-only fault hook (`ROAM_FAULT_HOST_CALL_DELAY_MS`): a wait
    /// between reading the term and sending each call, so that a fault
    /// test can pause a leader there and show hosts refusing its term.
    delay: Option<Duration>,
}

impl HostClient {
    pub(super) fn new(
        transport: &Transport,
        leadership: Arc<super::leadership::Leadership>,
    ) -> Result<HostClient, roam_tls::TlsError> {
        let delay = std::env::var("ROAM_FAULT_HOST_CALL_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        Ok(HostClient {
            leadership,
            delay,
            http: transport.client(reqwest::Client::builder().timeout(Duration::from_secs(30)))?,
            stream: transport
                .client(reqwest::Client::builder().connect_timeout(Duration::from_secs(10)))?,
        })
    }

    /// Send `request` to `to` with its secret; an error status is an
    /// error.
    async fn send(
        &self,
        to: &Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, HostError> {
        let Some(term) = self.leadership.term() else {
            return Err(HostError::NotLeader(to.name.clone()));
        };
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let r = request
            .bearer_auth(&to.secret)
            .header(headers::TERM, term.to_string())
            .send()
            .await
            .map_err(|error| HostError::Unreachable {
                host: to.name.clone(),
                refused: refused(&error),
                error,
            })?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        let newest = r
            .headers()
            .get(headers::TERM)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(newest) = newest.filter(|n| status == StatusCode::CONFLICT && *n > term) {
            tracing::warn!(host = %to.name, term, newest, "a host refused this replica's term: another leads");
            return Err(HostError::StaleTerm {
                host: to.name.clone(),
                term,
                newest,
            });
        }
        Err(HostError::Answered {
            host: to.name.clone(),
            status,
            body: answer::error_text(r).await,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        to: &Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<T, HostError> {
        let r = self.send(to, request).await?;
        read(to, answer::json(r, roam_proto::MAX_JSON_ANSWER)).await
    }

    /// `PUT /v1/instances/{workload}`: run a workload.
    pub(super) async fn start(
        &self,
        to: &Endpoint,
        workload: &str,
        spec: &StartInstance,
    ) -> Result<(), HostError> {
        let url = paths::instance(workload)?.on(&to.base);
        self.send(to, self.http.put(url).json(spec)).await.map(drop)
    }

    /// `POST /v1/instances/{workload}/upgrade`: run another revision in
    /// place of the copy there, with its state; answered once the new
    /// version started (its import or init hook returned), or refused
    /// with the old version serving on.
    pub(super) async fn upgrade(
        &self,
        to: &Endpoint,
        workload: &str,
        upgrade: &roam_proto::UpgradeInstance,
    ) -> Result<roam_proto::UpgradeDone, HostError> {
        let url = paths::instance_upgrade(workload)?.on(&to.base);
        let r = self.send(to, self.http.post(url).json(upgrade)).await?;
        read(to, answer::json(r, SMALL_ANSWER)).await
    }

    /// `DELETE /v1/instances/{workload}`: stop it; a host that does not run
    /// it counts as stopped.
    pub(super) async fn stop(
        &self,
        to: &Endpoint,
        workload: &str,
        which: Stop,
    ) -> Result<(), HostError> {
        let url = paths::instance(workload)?.on(&to.base);
        let query = StopQuery {
            below_generation: match which {
                Stop::Any => None,
                Stop::Below(g) => Some(g),
            },
        };
        match self.send(to, self.http.delete(url).query(&query)).await {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            other => other.map(drop),
        }
    }

    /// `POST /v1/instances/{workload}/generation`: the copy there runs at
    /// `generation` from now on.
    pub(super) async fn raise_generation(
        &self,
        to: &Endpoint,
        workload: &str,
        generation: u64,
    ) -> Result<(), HostError> {
        let url = paths::instance_generation(workload)?.on(&to.base);
        self.send(
            to,
            self.http
                .post(url)
                .json(&roam_proto::RaiseGeneration { generation }),
        )
        .await
        .map(drop)
    }

    /// `PUT /v1/standbys/{workload}`: keep a standby there.
    pub(super) async fn keep_standby(
        &self,
        to: &Endpoint,
        workload: &str,
        standby: &StartStandby,
    ) -> Result<(), HostError> {
        let url = paths::standby(workload)?.on(&to.base);
        self.send(to, self.http.put(url).json(standby))
            .await
            .map(drop)
    }

    /// `DELETE /v1/standbys/{workload}`; a host without it counts as done.
    pub(super) async fn drop_standby(
        &self,
        to: &Endpoint,
        workload: &str,
    ) -> Result<(), HostError> {
        let url = paths::standby(workload)?.on(&to.base);
        let request = self.http.delete(url).timeout(STATUS_TIMEOUT);
        match self.send(to, request).await {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            other => other.map(drop),
        }
    }

    /// `POST /v1/standbys/{workload}/promote`.
    pub(super) async fn promote(
        &self,
        to: &Endpoint,
        workload: &str,
        promote: &Promote,
    ) -> Result<(), HostError> {
        let url = paths::standby_promote(workload)?.on(&to.base);
        self.send(to, self.http.post(url).json(promote))
            .await
            .map(drop)
    }

    /// `PUT /v1/instances/{workload}/standby` (or `DELETE` with `None`):
    /// where the primary streams its checkpoints.
    pub(super) async fn stream_to(
        &self,
        to: &Endpoint,
        workload: &str,
        target: Option<&StandbyTarget>,
    ) -> Result<(), HostError> {
        let url = paths::instance_standby(workload)?.on(&to.base);
        let request = match target {
            Some(t) => self.http.put(url).json(t),
            None => self.http.delete(url),
        };
        match self.send(to, request.timeout(STATUS_TIMEOUT)).await {
            Err(e) if target.is_none() && e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            other => other.map(drop),
        }
    }

    /// `PUT /v1/revoked`: the revoked certificates, replacing the host's
    /// list.
    pub(super) async fn put_revoked(
        &self,
        to: &Endpoint,
        fingerprints: Vec<String>,
    ) -> Result<(), HostError> {
        let url = paths::revoked().on(&to.base);
        let body = roam_proto::Revocations { fingerprints };
        let request = self.http.put(url).timeout(STATUS_TIMEOUT).json(&body);
        self.send(to, request).await.map(drop)
    }

    /// `GET /v1/instances/{workload}/logs`.
    pub(super) async fn logs(
        &self,
        to: &Endpoint,
        workload: &str,
        query: &roam_proto::logs::LogsQuery,
    ) -> Result<roam_proto::logs::InstanceLogs, HostError> {
        let url = paths::instance_logs(workload)?.on(&to.base);
        let request = self.http.get(url).query(query).timeout(STATUS_TIMEOUT);
        let r = self.send(to, request).await?;
        read(to, answer::json(r, roam_proto::logs::MAX_PAGE_BYTES)).await
    }

    /// `POST /v1/instances/{workload}/snapshot`: the encoded snapshot.
    pub(super) async fn snapshot(
        &self,
        to: &Endpoint,
        workload: &str,
    ) -> Result<Vec<u8>, HostError> {
        let url = paths::instance_snapshot(workload)?.on(&to.base);
        let r = self.send(to, self.http.post(url)).await?;
        read(to, answer::bytes(r, roam_proto::MAX_SNAPSHOT)).await
    }

    /// `PUT /v1/instances/{workload}/restore`: start from a snapshot.
    pub(super) async fn restore(
        &self,
        to: &Endpoint,
        workload: &str,
        spec: &StartInstance,
        snapshot: Vec<u8>,
    ) -> Result<(), HostError> {
        let url = paths::instance_restore(workload)?.on(&to.base);
        let header = serde_json::to_string(spec).unwrap_or_default();
        let request = self
            .http
            .put(url)
            .header(headers::INSTANCE, header)
            .body(snapshot);
        self.send(to, request).await.map(drop)
    }

    /// A message for `workload` on the host (sent by the ingress's retry
    /// loop, which reads the answer itself).
    pub(super) fn message(
        &self,
        to: &Endpoint,
        workload: &str,
        from: &roam_proto::FromQuery,
        body: axum::body::Bytes,
    ) -> Result<reqwest::RequestBuilder, BadSegment> {
        Ok(self
            .http
            .post(paths::message(workload)?.on(&to.base))
            .query(from)
            .bearer_auth(&to.secret)
            .body(body))
    }

    /// A request to `workload`'s ingress on the host, at `rest` (the
    /// client's path and query, as it sent them), fenced by `generation`.
    pub(super) fn ingress(
        &self,
        to: &Endpoint,
        method: reqwest::Method,
        workload: &str,
        rest: &str,
        generation: u64,
    ) -> Result<reqwest::RequestBuilder, BadSegment> {
        Ok(self
            .http
            .request(method, paths::ingress(workload, rest)?.on(&to.base))
            .header(headers::GENERATION, generation.to_string()))
    }

    /// `POST /v1/migrations/{id}/prepare` on the target.
    pub(super) async fn prepare(
        &self,
        to: &Endpoint,
        id: &str,
        prepare: &PrepareMigration,
    ) -> Result<(), HostError> {
        let url = paths::migration_step(id, MigrationStep::Prepare)?.on(&to.base);
        self.send(to, self.http.post(url).json(prepare))
            .await
            .map(drop)
    }

    /// `POST /v1/migrations/{id}/send` on the source: the answer streams
    /// progress lines, read by the caller.
    pub(super) async fn send_migration(
        &self,
        to: &Endpoint,
        id: &str,
        send: &SendMigration,
    ) -> Result<reqwest::Response, HostError> {
        let url = paths::migration_step(id, MigrationStep::Send)?.on(&to.base);
        self.send(to, self.stream.post(url).json(send)).await
    }

    /// `POST /v1/migrations/{id}/freeze` on the source.
    pub(super) async fn freeze(&self, to: &Endpoint, id: &str) -> Result<(), HostError> {
        let url = paths::migration_step(id, MigrationStep::Freeze)?.on(&to.base);
        self.send(to, self.http.post(url)).await.map(drop)
    }

    /// `POST /v1/migrations/{id}/commit` or `/abort`.
    pub(super) async fn decide(
        &self,
        to: &Endpoint,
        id: &str,
        decision: Decision,
        body: &MigrationDecision,
    ) -> Result<CommitOutcome, HostError> {
        let step = match decision {
            Decision::Commit => MigrationStep::Commit,
            Decision::Abort => MigrationStep::Abort,
        };
        let url = paths::migration_step(id, step)?.on(&to.base);
        let r = self.send(to, self.http.post(url).json(body)).await?;
        Ok(answer::json(r, SMALL_ANSWER).await.unwrap_or_default())
    }

    /// Open (or keep open) `n` connections to `to`, in the background: `n`
    /// status calls about migration `id` at once, their answers dropped.
    /// The ingress sends a migrating workload's requests to its target
    /// from the commit on, and a connection opened only then would cost
    /// each of them a round trip on the link (two over TLS).
    pub(super) fn warm(&self, to: &Endpoint, id: &str, query: &MigrationStatusQuery, n: usize) {
        let Some(term) = self.leadership.term() else {
            return;
        };
        let Ok(path) = paths::migration_step(id, MigrationStep::Status) else {
            return;
        };
        let url = path.on(&to.base);
        let calls: Vec<_> = (0..n)
            .map(|_| {
                self.http
                    .get(url.clone())
                    .query(query)
                    .bearer_auth(&to.secret)
                    .header(headers::TERM, term.to_string())
                    .timeout(STATUS_TIMEOUT)
            })
            .collect();
        tokio::spawn(futures_util::future::join_all(calls.into_iter().map(
            |call| async move {
                // Read to the end: the connection goes back to the pool.
                if let Ok(r) = call.send().await {
                    let _ = r.bytes().await;
                }
            },
        )));
    }

    /// `GET /v1/migrations/{id}/status`, as an [`Answer`].
    pub(super) async fn status(
        &self,
        to: Option<&Endpoint>,
        id: &str,
        query: &MigrationStatusQuery,
    ) -> Answer {
        let Some(to) = to else {
            return Answer::Silent;
        };
        let url = match paths::migration_step(id, MigrationStep::Status) {
            Ok(p) => p.on(&to.base),
            Err(_) => return Answer::Silent,
        };
        let request = self.http.get(url).query(query).timeout(STATUS_TIMEOUT);
        match self.json::<MigrationStatus>(to, request).await {
            Ok(status) => Answer::Said(status),
            Err(HostError::Unreachable { refused: true, .. }) => Answer::Gone,
            Err(_) => Answer::Silent,
        }
    }
}

/// A decision the scheduler sends to a migration's hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// Commit (target: activate; source: hand off).
    Commit,
    /// Abort (target: drop; source: stop sending, or resume).
    Abort,
}
