//! What the hub keeps on disk: every stored record, in one place. Backends store these as they are (sled as
//! JSON, PostgreSQL in columns); changing a field here is a schema change (keep `#[serde(default)]` so old
//! records read back, and add a test with a store written before the change).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A server: its identity, what it told about itself, and its counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub customer: String,
    pub plan: String,
    pub agent_id: String,
    /// The identity's current certificate (the newest issued).
    pub cert_serial: String,
    pub cert_not_after: i64,
    /// The certificate a renewal replaced, still accepted until the agent first connects with the new one
    /// (it may not have received or stored it). Every other serial this identity ever held is refused.
    pub prev_serial: String,
    /// When the identity was revoked (0: not revoked). Nothing connects or renews until a new enrollment.
    pub revoked_ms: i64,
    pub agent_version: String,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub created_ms: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// When the agent took its latest stored report (its clock).
    pub last_report_ms: i64,
    /// Highest seq durably stored (the ack high-water mark).
    pub last_seq: u64,
    pub reports_received: u64,
    pub connections: u64,
    pub dropped_reports: u64,
    /// Reports the hub refused as invalid, as the agent counts them (Hello).
    pub refused_reports: u64,
    /// Files the agent lets `logs` read (Hello).
    pub log_files: Vec<String>,
    /// Deprovisioned at (0: in service): apps stopped, tokens burned, waiting for the archive.
    pub suspended_ms: i64,
    /// The archive of its data at the hub (after a deprovision's wait), with its SHA-256 and size.
    pub archive: String,
    pub archive_sha256: String,
    pub archive_bytes: u64,
    /// The pins of the CAs the agent says it trusts (Hello, renewal), and of the CA that signed its current
    /// certificate: a CA rotation's progress.
    pub ca_pins: Vec<String>,
    pub cert_issuer: String,
    /// When its latest stream opened.
    pub connected_ms: i64,
}

impl ServerRecord {
    /// A hash of the record without its progress fields, with no copy of the record (it runs for every report). The
    /// pattern names every field: a new field of the record must be placed here, on one side or the other.
    pub fn static_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let ServerRecord {
            // Progress: stored apart.
            last_seq: _,
            reports_received: _,
            last_seen_ms: _,
            last_report_ms: _,
            first_seen_ms: _,
            name,
            labels,
            customer,
            plan,
            agent_id,
            cert_serial,
            cert_not_after,
            prev_serial,
            revoked_ms,
            agent_version,
            hostname,
            os,
            kernel,
            arch,
            created_ms,
            connections,
            dropped_reports,
            refused_reports,
            log_files,
            suspended_ms,
            archive,
            archive_sha256,
            archive_bytes,
            ca_pins,
            cert_issuer,
            connected_ms,
        } = self;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (name, labels, customer, plan, agent_id, cert_serial, cert_not_after, prev_serial).hash(&mut h);
        (revoked_ms, agent_version, hostname, os, kernel, arch, created_ms, connections).hash(&mut h);
        (dropped_reports, refused_reports, log_files, suspended_ms, archive, archive_sha256, archive_bytes)
            .hash(&mut h);
        (ca_pins, cert_issuer, connected_ms).hash(&mut h);
        h.finish()
    }
}

/// An unused join token (keyed by the SHA-256 of its secret; the secret is never stored).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub server: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub created_by: String,
}

/// A used join token, kept so a reuse gets a precise error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BurnedToken {
    pub server: String,
    pub burned_ms: i64,
    pub agent_id: String,
}

/// A revoked certificate serial.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Revoked {
    pub server: String,
    pub revoked_ms: i64,
    pub by: String,
}

/// A revoked operator name: its certificates issued at or before `revoked_ms` are refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct OperatorRevocation {
    pub revoked_ms: i64,
    pub by: String,
}

/// A dispatched command whose result is not audited yet, kept so a restarted hub delivers it again (the
/// agent's journal answers one it already ran) and audits its result. Arguments are kept as sent, except
/// that every secret-bearing one is sealed (`crate::seal`), until the result is audited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingRecord {
    pub server: String,
    pub job_id: String,
    pub action: String,
    pub args: BTreeMap<String, String>,
    pub operator: String,
    pub run_for_ms: u64,
    /// Wall clock: the caller's deadline; for a command sent at once, when it must have ended.
    pub deadline_ms: Option<i64>,
    /// Wall clock: a queued command waits for its server until then.
    pub queue_until_ms: Option<i64>,
    /// The hub (replica id) whose job waits for this command; empty on a store one hub owns.
    #[serde(default)]
    pub hub: String,
}

/// The rest of a fan-out: the batches not dispatched yet, written with each batch's pending records (one
/// write), removed when the job ends. A restarted hub finishes the dispatched batch and then runs these.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanRecord {
    pub action: String,
    pub args: BTreeMap<String, String>,
    pub operator: String,
    pub audit_id: u64,
    /// The targets not dispatched yet, in order, and their batch sizes.
    pub targets: Vec<String>,
    pub batches: Vec<usize>,
    pub max_failure_rate: f64,
    pub run_for_ms: u64,
    /// Wall clock: the caller's deadline, if it gave one.
    pub deadline_ms: Option<i64>,
    pub queue_secs: Option<u64>,
    /// Outcomes of the batches before the one dispatched with this record.
    pub succeeded: u32,
    pub failed: u32,
    /// The hub (replica id) running the job; empty on a store one hub owns.
    #[serde(default)]
    pub hub: String,
    /// The job's maintenance window (`HH:MM-HH:MM`, UTC), if it has one.
    #[serde(default)]
    pub window: String,
    /// An operator paused the job: no further batch starts until resumed.
    #[serde(default)]
    pub paused: bool,
}

/// What kind of event an audit record is.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An action accepted and about to be dispatched.
    #[default]
    Requested,
    /// A request refused before dispatch (role, arguments, selector, confirmation, ...).
    Refused,
    /// One target's outcome.
    Result,
    Cancel,
    /// A running job paused or resumed.
    Pause,
    Token,
    Revoke,
    /// A lifecycle job queued or ended (provision, deprovision, ...).
    Job,
    /// An alert fired or resolved.
    Alert,
    /// The fleet CA's rotation started, advanced or rolled back.
    Ca,
    /// A copy of the store was taken for a backup.
    Backup,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requested => "requested",
            Kind::Refused => "refused",
            Kind::Result => "result",
            Kind::Cancel => "cancel",
            Kind::Pause => "pause",
            Kind::Token => "token",
            Kind::Revoke => "revoke",
            Kind::Job => "job",
            Kind::Alert => "alert",
            Kind::Ca => "ca",
            Kind::Backup => "backup",
        }
    }
}

/// How an audited request or command ended. Stored as a word: the wire enum's numbering is not stored data.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A request, a cancel, a token: no outcome.
    #[default]
    None,
    Succeeded,
    Failed,
    Refused,
    Cancelled,
    TimedOut,
    Interrupted,
    Expired,
    Skipped,
}

impl Outcome {
    /// The outcome of `outpost.v1.Outcome` number `n`, as records written before 2026-11-30 hold it (unknown
    /// numbers are `None`). Fixed here, independent of the generated code: it describes stored data.
    pub fn from_stored_number(n: i32) -> Outcome {
        match n {
            1 => Outcome::Succeeded,
            2 => Outcome::Failed,
            3 => Outcome::Refused,
            4 => Outcome::Cancelled,
            5 => Outcome::TimedOut,
            6 => Outcome::Interrupted,
            7 => Outcome::Expired,
            8 => Outcome::Skipped,
            _ => Outcome::None,
        }
    }
}

/// Reads an outcome stored as a word, or as the wire number that records written before 2026-11-30 hold.
fn outcome_compat<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Outcome, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Number(i32),
        Word(Outcome),
    }
    Ok(match Stored::deserialize(d)? {
        Stored::Number(n) => Outcome::from_stored_number(n),
        Stored::Word(o) => o,
    })
}

/// One audit record. `id` and `at_ms` are given by the store when it is appended.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuditEntry {
    pub id: u64,
    pub at_ms: i64,
    pub operator: String,
    pub role: String,
    pub kind: Kind,
    pub action: String,
    /// Redacted (see `outpost_common::actions::redacted`).
    pub args: BTreeMap<String, String>,
    pub selector: String,
    pub servers: Vec<String>,
    pub job_id: String,
    pub command_id: String,
    /// How a request or command ended (`none` for requests); records written before this was a word hold
    /// the wire number and still read back.
    #[serde(deserialize_with = "outcome_compat")]
    pub outcome: Outcome,
    pub message: String,
}

/// An audit query: every non-empty field must match; newest first, at most `limit`.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub operator: String,
    pub server: String,
    pub action: String,
    pub since_ms: i64,
    pub until_ms: i64,
    pub limit: usize,
}

impl AuditQuery {
    pub fn matches(&self, e: &AuditEntry) -> bool {
        (self.until_ms == 0 || e.at_ms <= self.until_ms)
            && (self.since_ms == 0 || e.at_ms >= self.since_ms)
            && (self.operator.is_empty() || e.operator == self.operator)
            && (self.action.is_empty() || e.action == self.action)
            && (self.server.is_empty() || e.servers.contains(&self.server))
    }
}

/// What a queued job does.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    #[default]
    Provision,
    Deprovision,
    Archive,
    Delete,
    Reactivate,
    EnrollSsh,
}

impl JobKind {
    pub const ALL: [JobKind; 6] = [
        JobKind::Provision,
        JobKind::Deprovision,
        JobKind::Archive,
        JobKind::Delete,
        JobKind::Reactivate,
        JobKind::EnrollSsh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Provision => "provision",
            JobKind::Deprovision => "deprovision",
            JobKind::Archive => "archive",
            JobKind::Delete => "delete",
            JobKind::Reactivate => "reactivate",
            JobKind::EnrollSsh => "enroll-ssh",
        }
    }
}

/// Where a queued job is. `Succeeded`, `Failed` and `Cancelled` are final.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

/// One step of a job, as it ran. A step that ended `ok` is never run again when the job resumes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StepRecord {
    pub name: String,
    pub started_ms: i64,
    /// 0 while it runs.
    pub ended_ms: i64,
    pub ok: bool,
    /// What it did, or why it failed.
    pub message: String,
}

/// A job of the durable queue: provisioning and the server lifecycle.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct QueuedJob {
    /// Given by the store at submission; grows with time.
    pub id: u64,
    pub kind: JobKind,
    pub state: JobState,
    /// Higher runs first (team 3, pro 2, starter 1); then the older.
    pub priority: u8,
    /// Submitting the same key again returns this job; with other parameters it is refused.
    pub idempotency_key: String,
    /// What was asked (customer, plan, location, name, ...); compared for the idempotency key.
    pub params: BTreeMap<String, String>,
    /// The server the job is about.
    pub target: String,
    pub customer: String,
    pub submitted_by: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: i64,
    /// Attempts started (1 on the first run).
    pub attempt: u32,
    pub max_attempts: u32,
    /// A pending job does not run before this (backoff, a scheduled timeline step).
    pub not_before_ms: i64,
    /// The worker that holds the job and until when; a job whose lease ran out is taken up again.
    pub lease_owner: String,
    pub lease_until_ms: i64,
    pub steps: Vec<StepRecord>,
    /// The running step's progress, in words.
    pub progress: String,
    /// Why the last attempt failed (kept while retrying).
    pub error: String,
    pub cancel_requested: bool,
    /// What steps learned and later steps (and a resumed attempt) need: the cloud server id, its action...
    pub facts: BTreeMap<String, String>,
}

impl QueuedJob {
    /// The step called `name` that ended well, if any.
    pub fn done(&self, name: &str) -> bool {
        self.steps.iter().any(|s| s.name == name && s.ok && s.ended_ms > 0)
    }
}

/// A silence: alerts whose labels include every matcher are not notified until `expires_ms`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SilenceRecord {
    pub matchers: BTreeMap<String, String>,
    pub starts_ms: i64,
    pub expires_ms: i64,
    pub creator: String,
    pub comment: String,
}

/// Which rollup a usage bucket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    Hour,
    Day,
}

impl Resolution {
    pub fn ms(self) -> i64 {
        match self {
            Resolution::Hour => 3_600_000,
            Resolution::Day => 86_400_000,
        }
    }

    /// The start of the bucket `at_ms` falls in (UTC).
    pub fn start(self, at_ms: i64) -> i64 {
        at_ms - at_ms.rem_euclid(self.ms())
    }
}

/// What one server used in one hour or one day, per scope, with the customer and plan it had then (usage
/// outlives the server record). Stored as protobuf: at 10,000 servers with ten apps each these are most of
/// the store, and JSON would triple them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UsageBucket {
    #[prost(string, tag = "1")]
    pub customer: String,
    #[prost(string, tag = "2")]
    pub plan: String,
    #[prost(message, repeated, tag = "3")]
    pub scopes: Vec<ScopeUsage>,
}

/// One scope's usage in a bucket. `scope` is `host`, `namespace/PROJECT` or `app/PROJECT/APP`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeUsage {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(double, tag = "2")]
    pub cpu_seconds: f64,
    /// Memory integrated over time: divided by `covered_secs`, the average.
    #[prost(double, tag = "3")]
    pub memory_byte_seconds: f64,
    #[prost(double, tag = "4")]
    pub covered_secs: f64,
    #[prost(uint64, tag = "5")]
    pub memory_peak_bytes: u64,
    #[prost(uint64, tag = "6")]
    pub memory_last_bytes: u64,
    #[prost(uint64, tag = "7")]
    pub disk_bytes_max: u64,
    #[prost(uint64, tag = "8")]
    pub database_bytes_max: u64,
    #[prost(uint64, tag = "9")]
    pub egress_bytes: u64,
    #[prost(uint32, tag = "10")]
    pub samples: u32,
    /// Counter decreases taken as resets.
    #[prost(uint32, tag = "11")]
    pub resets: u32,
}

/// Where a server's usage counters were at its last usage report: the next report's differences are taken
/// from here. Stored with the buckets in one atomic write, so a report is counted once even when the hub
/// dies between that write and the high-water mark.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UsageCursor {
    /// The report these counters came with.
    pub seq: u64,
    pub scopes: BTreeMap<String, UsageCounters>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UsageCounters {
    pub cpu_usec: u64,
    pub egress_bytes: u64,
    pub taken_at_ms: i64,
}

/// A firing alert, kept so that a hub restart neither notifies it again nor forgets who acknowledged it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AlertRecord {
    pub labels: BTreeMap<String, String>,
    pub since_ms: i64,
    pub fired_ms: i64,
    pub value: f64,
    pub summary: String,
    pub action: String,
    pub acked_by: String,
    /// Its firing was notified (the webhook): its resolution will be too.
    pub notified: bool,
}
