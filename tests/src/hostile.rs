//! A hostile agent: the public gRPC contract spoken by hand, with none of agentd's code. It enrolls with
//! its own key and CSR (rcgen, as `openssl req` would), opens `Connect` and sends whatever a test tells it
//! to, reading the hub's answers as they come.

use outpost_common::JoinToken;
use outpost_common::tls::{HubAddr, fetch_pinned_ca};
use outpost_proto::v1::agent_link_client::AgentLinkClient;
use outpost_proto::v1::enrollment_client::EnrollmentClient;
use outpost_proto::v1::{
    AgentMessage, CommandUpdate, EnrollRequest, Health, Hello, HostFacts, HubMessage, RenewRequest, agent_message,
    hub_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::WAIT;

/// What a hostile agent holds: its certificate and key, the CA, the hub.
#[derive(Clone, Debug)]
pub struct RawIdentity {
    pub agent_id: String,
    pub server: String,
    pub hub: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl RawIdentity {
    pub fn serial(&self) -> String {
        outpost_common::CertInfo::from_pem(&self.cert_pem).expect("a certificate").serial
    }

    /// The same identity with another certificate (and the key it was issued for).
    pub fn with_cert(&self, cert_pem: &str, key_pem: &str) -> RawIdentity {
        RawIdentity { cert_pem: cert_pem.into(), key_pem: key_pem.into(), ..self.clone() }
    }
}

/// A fresh P-256 key and a CSR with no subject and no extensions.
pub fn key_and_csr() -> (String, String) {
    let (key, csr) = outpost_common::cert::key_and_csr().unwrap();
    (key.serialize_pem(), csr)
}

/// Enrolls with `token` and `host` facts; `Err` is the hub's refusal.
pub async fn enroll_with(token: &str, host: HostFacts) -> Result<RawIdentity, tonic::Status> {
    let token = JoinToken::parse(token).expect("a token string");
    let addr = HubAddr::parse(&token.hub).unwrap();
    let ca_pem = fetch_pinned_ca(&addr, &token.pin).await.expect("the pinned CA");
    let (key_pem, csr_pem) = key_and_csr();
    let mut client = EnrollmentClient::new(addr.channel(&ca_pem, None).unwrap());
    let resp = client.enroll(EnrollRequest { join_token: token.secret, csr_pem, host: Some(host) }).await?.into_inner();
    Ok(RawIdentity {
        agent_id: resp.agent_id,
        server: resp.server_name,
        hub: addr.url,
        ca_pem: resp.ca_bundle_pem,
        cert_pem: resp.cert_chain_pem,
        key_pem,
    })
}

pub async fn enroll(token: &str) -> RawIdentity {
    enroll_with(token, HostFacts::default()).await.expect("enrolled")
}

/// An open `Connect` stream driven by hand.
pub struct RawLink {
    pub tx: mpsc::Sender<AgentMessage>,
    pub rx: tonic::Streaming<HubMessage>,
}

pub fn body(b: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(b) }
}

pub fn hello() -> AgentMessage {
    body(agent_message::Body::Hello(Hello::default()))
}

pub fn report(seq: u64, health: Health) -> AgentMessage {
    body(agent_message::Body::Report(outpost_common::report::health_report(seq, outpost_common::now_ms(), health)))
}

pub fn update(u: CommandUpdate) -> AgentMessage {
    body(agent_message::Body::CommandUpdate(u))
}

impl RawLink {
    /// Opens `Connect` with `first` as the first message. `Err` is the hub's refusal (at connect, or as the
    /// first thing on the stream).
    pub async fn open(id: &RawIdentity, first: AgentMessage) -> Result<(RawLink, hub_message::Body), tonic::Status> {
        let ch = HubAddr::parse(&id.hub).unwrap().channel(&id.ca_pem, Some((&id.cert_pem, &id.key_pem))).unwrap();
        let (tx, rx) = mpsc::channel(1024);
        tx.send(first).await.unwrap();
        let mut rx = AgentLinkClient::new(ch).connect(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match tokio::time::timeout(WAIT, rx.message()).await.expect("an answer in time")? {
            Some(HubMessage { body: Some(b) }) => b,
            other => panic!("expected Welcome, got {other:?}"),
        };
        Ok((RawLink { tx, rx }, welcome))
    }

    /// Opens with a plain Hello.
    pub async fn connect(id: &RawIdentity) -> Result<RawLink, tonic::Status> {
        RawLink::open(id, hello()).await.map(|(l, _)| l)
    }

    pub async fn send(&self, m: AgentMessage) {
        let _ = self.tx.send(m).await;
    }

    /// The next message from the hub; `Err` is the status the stream ended with.
    pub async fn next(&mut self) -> Result<hub_message::Body, tonic::Status> {
        match tokio::time::timeout(WAIT, self.rx.message()).await.expect("the hub answers in time")? {
            Some(HubMessage { body: Some(b) }) => Ok(b),
            Some(HubMessage { body: None }) => panic!("a HubMessage without a body"),
            None => Err(tonic::Status::cancelled("the hub ended the stream")),
        }
    }

    /// Reads until `pick` returns something (skipping other messages).
    pub async fn until<T>(
        &mut self,
        mut pick: impl FnMut(&hub_message::Body) -> Option<T>,
    ) -> Result<T, tonic::Status> {
        loop {
            let m = self.next().await?;
            if let Some(t) = pick(&m) {
                return Ok(t);
            }
        }
    }

    /// Waits for the next Command and returns its id.
    pub async fn next_command(&mut self) -> Result<String, tonic::Status> {
        self.until(|m| match m {
            hub_message::Body::Command(c) => Some(c.command_id.clone()),
            _ => None,
        })
        .await
    }

    /// Renews over the stream; returns the new certificate chain and its key, or the hub's refusal text.
    pub async fn renew(&mut self) -> Result<(String, String), String> {
        let (key_pem, csr_pem) = key_and_csr();
        self.send(body(agent_message::Body::Renew(RenewRequest { csr_pem, ca_pins: Vec::new() }))).await;
        let r = self
            .until(|m| match m {
                hub_message::Body::Renewed(r) => Some(r.clone()),
                _ => None,
            })
            .await
            .map_err(|s| s.message().to_string())?;
        if r.error.is_empty() { Ok((r.cert_chain_pem, key_pem)) } else { Err(r.error) }
    }
}
