//! Hub to hub, for several replicas on one store: an action whose targets' streams are all on another
//! replica runs there, and its events stream back through this one to the caller.
//!
//! The replica that received the request signs a short-lived operator certificate for the caller (same
//! name and role: it holds the shared CA) and calls the other replica's `RunAction` with it; the other
//! replica authorises, audits and runs the job as for any operator. A forwarded request is marked and
//! never forwarded again.

use std::sync::Arc;
use std::time::Duration;

use outpost_proto::v1 as pb;
use pb::operator_client::OperatorClient;
use tonic::{Request, Status};

use crate::actions::Caller;
use crate::pki::rotation::Pki;
use crate::replicas::Placement;

/// The metadata key that marks a request one replica forwarded to another.
pub const FORWARDED: &str = "x-outpost-forwarded";
/// How long the certificate a forwarded request carries lives.
const FORWARD_CERT_TTL: Duration = Duration::from_secs(300);

pub struct Peers {
    placement: Arc<Placement>,
    ca: Arc<Pki>,
}

impl Peers {
    pub fn new(placement: Arc<Placement>, ca: Arc<Pki>) -> Peers {
        Peers { placement, ca }
    }

    /// The address of the one other replica every target's stream is on, when none is here (`local`).
    pub fn route(&self, targets: &[String], local: impl Fn(&str) -> bool) -> Option<String> {
        if targets.is_empty() || targets.iter().any(|t| local(t)) {
            return None;
        }
        let mut replicas = targets.iter().map(|t| self.placement.replica_of(t));
        let first = replicas.next()??;
        replicas.all(|r| r.as_ref() == Some(&first)).then_some(first.1)
    }

    /// Runs `req` on the replica at `url` as `caller`; its job events, as that replica sends them.
    pub async fn run_action(
        &self,
        caller: &Caller,
        url: &str,
        req: pb::RunActionRequest,
    ) -> Result<tonic::Streaming<pb::JobEvent>, Status> {
        let internal = |e: String| Status::internal(format!("forwarding to the replica at {url}: {e}"));
        let keys = self.ca.keys();
        let (issued, key) = keys
            .signing()
            .issue_operator(&caller.name, caller.role, FORWARD_CERT_TTL)
            .map_err(|e| internal(e.to_string()))?;
        let addr = outpost_common::tls::HubAddr::parse(url).map_err(|e| internal(e.to_string()))?;
        let channel =
            addr.channel(&keys.trust_pem(), Some((&issued.chain_pem, &key))).map_err(|e| internal(e.to_string()))?;
        let mut client = OperatorClient::new(channel)
            .max_decoding_message_size(outpost_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(outpost_proto::MAX_MESSAGE_BYTES);
        let mut request = Request::new(req);
        request.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        tracing::info!(operator = %caller.name, %url, "action forwarded to the replica its targets are on");
        Ok(client.run_action(request).await?.into_inner())
    }
}
