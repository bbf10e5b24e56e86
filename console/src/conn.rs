//! The hub connection: a small state machine (connecting → live → reconnecting with backoff) that feeds
//! fleet events to the UI loop. The last known state stays on screen while the hub is away.

use std::time::Duration;

use outpost_proto::v1::operator_client::OperatorClient;
use outpost_proto::v1::{FleetEvent, WatchFleetRequest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Debug)]
pub enum ConnEvent {
    Live,
    Fleet(Box<FleetEvent>),
    Detail(Box<outpost_proto::v1::ServerDetail>),
    /// A request failed; the operator should know.
    Error(String),
    /// An event of the job this console started.
    Job(Box<outpost_proto::v1::JobEvent>),
    /// The hub refused (or lost) the job request.
    JobRefused(String),
    Audit(Vec<outpost_proto::v1::AuditRecord>),
    Queue(Box<outpost_proto::v1::ListLifecycleJobsResponse>),
    Alerts(Vec<outpost_proto::v1::AlertInfo>),
    Usage(Box<outpost_proto::v1::GetUsageResponse>),
    /// The fleet CA's rotation, as the header shows it.
    CaRotation(Box<outpost_proto::v1::CaRotationStatus>),
    /// Something the operator should read that is not an error (a job queued, cancelled).
    Info(String),
    Down {
        error: String,
        retry_in: Duration,
    },
}

const INITIAL: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(10);

/// Watches the fleet until `stop`, reconnecting as needed.
pub async fn watch(channel: Channel, tx: mpsc::Sender<ConnEvent>, stop: CancellationToken) {
    let mut attempt = 0;
    loop {
        let mut client = OperatorClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let error = match tokio::select! { _ = stop.cancelled() => return, r = client.watch_fleet(WatchFleetRequest {}) => r }
        {
            Err(s) => s.message().to_string(),
            Ok(resp) => {
                let mut stream = resp.into_inner();
                let mut live = false;
                loop {
                    let m = tokio::select! { _ = stop.cancelled() => return, m = stream.message() => m };
                    match m {
                        Ok(Some(e)) => {
                            if !live {
                                live = true;
                                attempt = 0;
                                if tx.send(ConnEvent::Live).await.is_err() {
                                    return;
                                }
                            }
                            if tx.send(ConnEvent::Fleet(Box::new(e))).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break "the hub ended the watch".to_string(),
                        Err(s) => break s.message().to_string(),
                    }
                }
            }
        };
        let retry_in = outpost_common::backoff::full_jitter(attempt, INITIAL, MAX);
        attempt += 1;
        if tx.send(ConnEvent::Down { error, retry_in }).await.is_err() {
            return;
        }
        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(retry_in) => {} }
    }
}
