//! The cloud the hub creates servers in: a small trait the provisioner speaks, and its Hetzner Cloud
//! implementation over the `hcloud` crate.
//!
//! `hcloud` is a generated client that does no pagination, no retries and no rate-limit handling: that is
//! done here. Every call is retried on 429, 5xx and transport errors with exponential backoff and full
//! jitter, up to a bound; other errors are classified ([`CloudError`]) so the provisioner can act on them
//! (a sold-out server type moves on to the plan's next location; a name already taken is looked up). The
//! generated client does not expose response headers, so `RateLimit-Reset` cannot be honoured: a 429 waits
//! the backoff instead (its cap is above Hetzner's refill interval of one request per second).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use hcloud::apis::configuration::Configuration;
use hcloud::apis::{Error as ApiError, actions_api, firewalls_api, servers_api, ssh_keys_api};
use hcloud::models;

/// A server in the cloud, as the provisioner needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudServer {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub location: String,
    pub ipv4: String,
}

/// What to create.
#[derive(Clone, Debug)]
pub struct NewServer {
    pub name: String,
    pub server_type: String,
    pub image: String,
    pub location: String,
    pub labels: BTreeMap<String, String>,
    pub user_data: String,
    pub ssh_key: String,
    pub firewall: i64,
}

/// Where a cloud action is.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionState {
    Running(i32),
    Succeeded,
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CloudError {
    #[error("the cloud API refused the token (401 unauthorized): check provision.token_file or HCLOUD_TOKEN")]
    Unauthorized,
    #[error("the cloud API token lacks the rights for this (403 forbidden): it must be a read & write token")]
    Forbidden,
    #[error("rate limited by the cloud API (429) {0} times in a row; try again later")]
    RateLimited(u32),
    #[error("the cloud API is unavailable: {0}")]
    Unavailable(String),
    /// `resource_unavailable`: e.g. the server type is sold out in the location.
    #[error("{0}")]
    ResourceUnavailable(String),
    /// `uniqueness_error`: the name is taken.
    #[error("{0}")]
    Uniqueness(String),
    #[error("not found")]
    NotFound,
    #[error("the cloud API refused the request: {0}")]
    Invalid(String),
}

impl CloudError {
    /// Worth another attempt of the job later.
    pub fn transient(&self) -> bool {
        matches!(self, CloudError::RateLimited(_) | CloudError::Unavailable(_))
    }
}

#[async_trait]
pub trait Cloud: Send + Sync {
    /// Every server whose labels match `selector` (all pages).
    async fn servers(&self, selector: &str) -> Result<Vec<CloudServer>, CloudError>;
    /// Creates a server; returns it and its create action.
    async fn create_server(&self, new: &NewServer) -> Result<(CloudServer, i64), CloudError>;
    async fn action(&self, id: i64) -> Result<ActionState, CloudError>;
    /// Deletes a server; one that is gone already is fine.
    async fn delete_server(&self, id: i64) -> Result<(), CloudError>;
    /// The SSH key called `name` (created with `public_key` when missing); returns its name.
    async fn ensure_ssh_key(&self, name: &str, public_key: &str) -> Result<String, CloudError>;
    /// The firewall called `name` that admits only TCP 80 and 443 (created when missing); returns its id.
    async fn ensure_firewall(&self, name: &str) -> Result<i64, CloudError>;
}

/// Retries of one call on 429, 5xx and transport errors, and the hub's own pace.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// Calls per second the hub allows itself (all jobs together), and the burst: Hetzner's budget is 3600
    /// requests an hour per project, refilled at one a second. Staying inside it beats being told 429.
    pub rate_per_sec: f64,
    pub burst: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 8,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(20),
            rate_per_sec: 1.0,
            burst: 600,
        }
    }
}

/// A token bucket every call takes from (waiting when it is empty).
struct Pace {
    bucket: tokio::sync::Mutex<(f64, std::time::Instant)>,
    rate: f64,
    burst: f64,
}

impl Pace {
    async fn take(&self) {
        loop {
            let wait = {
                let mut b = self.bucket.lock().await;
                let now = std::time::Instant::now();
                b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * self.rate).min(self.burst);
                b.1 = now;
                if b.0 >= 1.0 {
                    b.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - b.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Hetzner Cloud through `hcloud`.
pub struct Hetzner {
    config: Configuration,
    retry: Retry,
    pace: Pace,
}

const PER_PAGE: i64 = 50;
/// The most one answer of the API may be before the hub stops reading it (a page of 50 servers is about
/// 100 KB): a broken or hostile API cannot make the hub hold hundreds of megabytes.
const ANSWER_MAX: usize = 8 << 20;
/// The most pages one listing reads (10,000 servers): an API that always says there is a next page must not
/// hold a job, or the API budget every job shares, for good.
const MAX_PAGES: i64 = 200;
/// How long a delete action may run before the delete is reported as not done (and retried).
const DELETE_WAIT: Duration = Duration::from_secs(120);

impl Hetzner {
    /// `base_url` is the API root (`https://api.hetzner.cloud/v1`, or a stand-in's).
    pub fn new(base_url: &str, token: &str, retry: Retry) -> Hetzner {
        let mut config = Configuration::new();
        for key in ["https://api.hetzner.cloud/v1", "https://api.hetzner.com/v1"] {
            config.base_path_mapping.insert(key.to_string(), base_url.trim_end_matches('/').to_string());
        }
        config.bearer_access_token = Some(token.to_string());
        config.user_agent = Some(format!("outpost-hubd/{}", env!("CARGO_PKG_VERSION")));
        config.client = reqwest_client();
        let burst = f64::from(retry.burst.max(1));
        let pace = Pace {
            bucket: tokio::sync::Mutex::new((burst, std::time::Instant::now())),
            rate: retry.rate_per_sec.max(0.001),
            burst,
        };
        Hetzner { config, retry, pace }
    }

    /// Runs `call` with retries on what is worth retrying.
    async fn call<T, E, F, Fut>(&self, what: &str, mut call: F) -> Result<T, CloudError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError<E>>>,
    {
        let mut throttled = 0;
        for attempt in 1..=self.retry.attempts {
            self.pace.take().await;
            let error = match call().await {
                Ok(v) => return Ok(v),
                Err(e) => classify(e),
            };
            if let CloudError::RateLimited(_) = error {
                throttled += 1;
            }
            if !error.transient() || attempt == self.retry.attempts {
                return Err(match error {
                    CloudError::RateLimited(_) => CloudError::RateLimited(throttled),
                    e => e,
                });
            }
            let wait = outpost_common::backoff::full_jitter(attempt - 1, self.retry.initial, self.retry.max);
            tracing::debug!(what, attempt, %error, wait_ms = wait.as_millis() as u64, "cloud call retried");
            tokio::time::sleep(wait).await;
        }
        unreachable!("the loop returns on its last attempt")
    }
}

impl Hetzner {
    /// One page of `GET /servers`, read at most [`ANSWER_MAX`] bytes far (the generated client reads any
    /// answer whole). The same request `servers_api::list_servers` makes, parsed into the same model.
    async fn list_page(
        &self,
        params: &servers_api::ListServersParams,
    ) -> Result<models::ListServersResponse, ApiError<()>> {
        let base = self.config.get_base_path("https://api.hetzner.cloud/v1");
        let mut req = self.config.client.get(format!("{base}/servers"));
        if let Some(sel) = &params.label_selector {
            req = req.query(&[("label_selector", sel)]);
        }
        req = req.query(&[("page", params.page.unwrap_or(1)), ("per_page", params.per_page.unwrap_or(PER_PAGE))]);
        if let Some(ua) = &self.config.user_agent {
            req = req.header(reqwest::header::USER_AGENT, ua);
        }
        if let Some(token) = &self.config.bearer_access_token {
            req = req.bearer_auth(token);
        }
        let mut r = req.send().await.map_err(ApiError::Reqwest)?;
        let status = r.status();
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(ApiError::Reqwest)? {
            if body.len() + chunk.len() > ANSWER_MAX {
                return Err(ApiError::Serde(<serde_json::Error as serde::de::Error>::custom(format!(
                    "an answer of more than {} MiB was not read further",
                    ANSWER_MAX >> 20
                ))));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let content = String::from_utf8_lossy(&body).into_owned();
            return Err(ApiError::ResponseError(hcloud::apis::ResponseContent { status, content, entity: None }));
        }
        serde_json::from_slice(&body).map_err(ApiError::Serde)
    }
}

/// A client with timeouts: a hung API must not hold a job forever.
fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

fn classify<E>(e: ApiError<E>) -> CloudError {
    match e {
        ApiError::ResponseError(r) => {
            let body: serde_json::Value = serde_json::from_str(&r.content).unwrap_or_default();
            // The API's words are bounded and inert before they go anywhere (a job's error, a log line).
            let code = outpost_common::text::for_notifier(body["error"]["code"].as_str().unwrap_or_default(), 64);
            let message = outpost_common::text::excerpt(body["error"]["message"].as_str().unwrap_or(&r.content), 300);
            match (r.status.as_u16(), code.as_str()) {
                (401, _) => CloudError::Unauthorized,
                (403, _) => CloudError::Forbidden,
                (429, _) | (_, "rate_limit_exceeded") => CloudError::RateLimited(1),
                (404, _) | (_, "not_found") => CloudError::NotFound,
                (_, "uniqueness_error") => CloudError::Uniqueness(message),
                (_, "resource_unavailable") => CloudError::ResourceUnavailable(message),
                // An action already runs on the resource (a server being deleted): try again later.
                (423, _) | (_, "locked") => CloudError::Unavailable(format!("locked: {message}")),
                (s, _) if s >= 500 => CloudError::Unavailable(format!("{s} {code} {message}")),
                (s, _) => CloudError::Invalid(format!("{s} {code}: {message}")),
            }
        }
        ApiError::Reqwest(e) => CloudError::Unavailable(format!(
            "cannot reach the API: {}",
            outpost_common::text::for_notifier(&e.to_string(), 300)
        )),
        ApiError::Serde(e) => CloudError::Invalid(format!(
            "the API's answer is not what its schema says: {}",
            outpost_common::text::for_notifier(&e.to_string(), 300)
        )),
        ApiError::Io(e) => CloudError::Unavailable(outpost_common::text::for_notifier(&e.to_string(), 300)),
    }
}

/// Whether `labels` satisfy `selector` (`k=v,k2=v2`: the equality selectors this hub sends).
pub fn matches_selector(labels: &BTreeMap<String, String>, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => labels.get(k.trim()).is_some_and(|l| l == v.trim()),
        None => labels.contains_key(term.trim()),
    })
}

fn server(s: models::Server) -> CloudServer {
    CloudServer {
        id: s.id,
        name: s.name,
        status: serde_json::to_value(s.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        labels: s.labels.into_iter().collect(),
        location: s.location.name,
        ipv4: s.public_net.ipv4.map(|ip| ip.ip).unwrap_or_default(),
    }
}

#[async_trait]
impl Cloud for Hetzner {
    async fn servers(&self, selector: &str) -> Result<Vec<CloudServer>, CloudError> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let params = servers_api::ListServersParams {
                label_selector: Some(selector.to_string()),
                page: Some(page),
                per_page: Some(PER_PAGE),
                ..Default::default()
            };
            let r = self.call("list servers", || self.list_page(&params)).await?;
            // Only what the selector asked for, whatever the answer holds: a server labelled for another
            // customer is never adopted, or deleted, because an API ignored the selector.
            let (matching, other): (Vec<CloudServer>, Vec<CloudServer>) =
                r.servers.into_iter().map(server).partition(|s| matches_selector(&s.labels, selector));
            if !other.is_empty() {
                tracing::warn!(
                    ignored = other.len(),
                    selector,
                    "the cloud API listed servers its label selector does not match; ignored"
                );
            }
            out.extend(matching);
            if out.len() > (MAX_PAGES * PER_PAGE) as usize {
                return Err(CloudError::Invalid(format!("the API listed more than {} servers", MAX_PAGES * PER_PAGE)));
            }
            match r.meta.pagination.next_page {
                Some(next) if next > page && page < MAX_PAGES => page = next,
                Some(next) if next > page => {
                    return Err(CloudError::Invalid(format!(
                        "the API still said there was a next page after {MAX_PAGES} pages of {PER_PAGE}; not followed further"
                    )));
                }
                _ => return Ok(out),
            }
        }
    }

    async fn create_server(&self, new: &NewServer) -> Result<(CloudServer, i64), CloudError> {
        let mut req = models::CreateServerRequest::new(new.image.clone(), new.name.clone(), new.server_type.clone());
        req.location = Some(new.location.clone());
        req.labels = Some(new.labels.clone().into_iter().collect());
        req.user_data = Some(new.user_data.clone());
        req.ssh_keys = Some(vec![new.ssh_key.clone()]);
        req.firewalls = Some(vec![models::CreateServerRequestFirewalls::new(new.firewall)]);
        req.start_after_create = Some(true);
        let params = servers_api::CreateServerParams { create_server_request: req };
        let r = self.call("create server", || servers_api::create_server(&self.config, params.clone())).await?;
        Ok((server(*r.server), r.action.id))
    }

    async fn action(&self, id: i64) -> Result<ActionState, CloudError> {
        let params = actions_api::GetActionParams { id };
        let a = self.call("get action", || actions_api::get_action(&self.config, params.clone())).await?.action;
        Ok(match a.status {
            models::action::Status::Running => ActionState::Running(a.progress),
            models::action::Status::Success => ActionState::Succeeded,
            models::action::Status::Error => ActionState::Failed(
                a.error.map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_else(|| "failed".into()),
            ),
        })
    }

    /// Deletes a server and waits until its delete action ends: the API keeps a server `deleting` while
    /// the action runs, and "deleted" is said only once it is gone.
    async fn delete_server(&self, id: i64) -> Result<(), CloudError> {
        let params = servers_api::DeleteServerParams { id };
        let action = match self.call("delete server", || servers_api::delete_server(&self.config, params.clone())).await
        {
            // An answer without an action: nothing to wait for.
            Ok(r) => match r.action {
                Some(a) => a.id,
                None => return Ok(()),
            },
            Err(CloudError::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        let until = tokio::time::Instant::now() + DELETE_WAIT;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.action(action).await {
                Ok(ActionState::Succeeded) | Err(CloudError::NotFound) => return Ok(()),
                Ok(ActionState::Failed(why)) => {
                    return Err(CloudError::Invalid(format!("the delete action failed: {why}")));
                }
                Ok(ActionState::Running(_)) if tokio::time::Instant::now() < until => {}
                Ok(ActionState::Running(p)) => {
                    return Err(CloudError::Unavailable(format!(
                        "the delete action was still running ({p}%) after {} s",
                        DELETE_WAIT.as_secs()
                    )));
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn ensure_ssh_key(&self, name: &str, public_key: &str) -> Result<String, CloudError> {
        let params = ssh_keys_api::ListSshKeysParams { name: Some(name.to_string()), ..Default::default() };
        let found = self.call("list ssh keys", || ssh_keys_api::list_ssh_keys(&self.config, params.clone())).await?;
        if found.ssh_keys.iter().any(|k| k.name == name) {
            return Ok(name.to_string());
        }
        let params = ssh_keys_api::CreateSshKeyParams {
            create_ssh_key_request: models::CreateSshKeyRequest::new(name.to_string(), public_key.to_string()),
        };
        match self.call("create ssh key", || ssh_keys_api::create_ssh_key(&self.config, params.clone())).await {
            Ok(_) | Err(CloudError::Uniqueness(_)) => Ok(name.to_string()),
            Err(e) => Err(e),
        }
    }

    async fn ensure_firewall(&self, name: &str) -> Result<i64, CloudError> {
        let find = || async {
            let params = firewalls_api::ListFirewallsParams { name: Some(name.to_string()), ..Default::default() };
            let r = self.call("list firewalls", || firewalls_api::list_firewalls(&self.config, params.clone())).await?;
            Ok::<_, CloudError>(r.firewalls.into_iter().find(|f| f.name == name).map(|f| f.id))
        };
        if let Some(id) = find().await? {
            return Ok(id);
        }
        let rule = |port: &str| {
            let mut r = models::Rule::new(models::rule::Direction::In, models::rule::Protocol::Tcp);
            r.port = Some(Some(port.to_string()));
            r.source_ips = Some(vec!["0.0.0.0/0".into(), "::/0".into()]);
            r.description = Some(Some(format!("web {port}")));
            r
        };
        let mut req = models::CreateFirewallRequest::new(name.to_string());
        req.rules = Some(vec![rule("80"), rule("443")]);
        req.labels = Some([("managed-by".to_string(), "outpost".to_string())].into_iter().collect());
        let params = firewalls_api::CreateFirewallParams { create_firewall_request: req };
        match self.call("create firewall", || firewalls_api::create_firewall(&self.config, params.clone())).await {
            Ok(r) => match r.firewall {
                Some(f) => Ok(f.id),
                None => find().await?.ok_or_else(|| CloudError::Invalid("created firewall not found".into())),
            },
            Err(CloudError::Uniqueness(_)) => {
                find().await?.ok_or_else(|| CloudError::Invalid("firewall name taken but not listed".into()))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cloud's error text (100 KB, escapes in its message and its code) is bounded and inert in every
    /// error it becomes, so in every job error and log line.
    #[test]
    fn an_api_error_text_is_bounded_and_inert() {
        let nasty = format!("\u{1b}[2J\u{1b}]0;pwned\u{7}{}", "x".repeat(100_000));
        for status in [422u16, 503, 409] {
            let body = serde_json::json!({ "error": { "code": nasty, "message": nasty } }).to_string();
            let content = hcloud::apis::ResponseContent {
                status: reqwest::StatusCode::from_u16(status).unwrap(),
                content: body,
                entity: None::<()>,
            };
            let said = classify(ApiError::ResponseError(content)).to_string();
            assert!(said.len() < 1024, "{status}: {} bytes", said.len());
            assert!(!said.chars().any(outpost_common::text::is_unsafe), "{status}: {said:?}");
        }
        let content = hcloud::apis::ResponseContent {
            status: reqwest::StatusCode::BAD_REQUEST,
            content: nasty.clone(),
            entity: None::<()>,
        };
        let said = classify(ApiError::ResponseError(content)).to_string();
        assert!(said.len() < 1024 && !said.chars().any(outpost_common::text::is_unsafe), "{said:?}");
    }

    #[test]
    fn selectors_match_equality_terms() {
        let labels: BTreeMap<String, String> =
            [("managed-by", "outpost"), ("outpost-id", "acme-1")].map(|(k, v)| (k.to_string(), v.to_string())).into();
        assert!(matches_selector(&labels, "managed-by=outpost,outpost-id=acme-1"));
        assert!(!matches_selector(&labels, "managed-by=outpost,outpost-id=victim-prod"));
        assert!(matches_selector(&labels, "managed-by"));
        assert!(!matches_selector(&labels, "other"));
    }
}
