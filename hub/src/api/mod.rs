//! The gRPC edge: the only hub code (besides the relay, which speaks the agent protocol) that knows tonic
//! and the generated wire types. Requests become domain calls here; domain results and errors become
//! messages and statuses here (`error`, `convert`).

pub mod admin;
pub mod agent_link;
pub mod auth;
pub mod convert;
pub mod error;
pub mod operator;
pub mod peer;
pub mod tls;

use std::time::Duration;

use outpost_proto::MAX_MESSAGE_BYTES;
use outpost_proto::v1::{
    agent_link_server::AgentLinkServer, enrollment_server::EnrollmentServer, operator_server::OperatorServer,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

/// HTTP/2 receive window per stream (the connection's is twice this): see `serve`.
const STREAM_WINDOW: u32 = 64 * 1024;
/// Concurrent streams per connection: 100 small DATA frames unread stay well inside h2's budget for them
/// (`max(connection window / 2, 25,600)` bytes, each frame under 256 bytes counted as 256).
const MAX_STREAMS: u32 = 100;

/// What the hub's one port serves.
pub struct ServeParts {
    pub listener: tokio::net::TcpListener,
    /// The hub's certificate and the CA client certificates must chain to, replaceable while serving.
    pub tls: std::sync::Arc<tls::ServerTls>,
    pub agents: agent_link::AgentApi,
    pub operator: operator::OperatorApi,
    /// Plain HTTP routes on the same port (the artifacts).
    pub http: axum::Router,
    pub shutdown: CancellationToken,
}

/// Serves the three services on `listener` with the hub's certificate (`(chain, key)` PEM) until
/// `shutdown`. Client certificates are optional at the TLS layer so that `Enroll` can share the port;
/// every other RPC demands one (`auth`).
pub fn serve(parts: ServeParts) -> Result<tokio::task::JoinHandle<Result<(), String>>, String> {
    let ServeParts { listener, tls, agents, operator, http, shutdown } = parts;
    let router = Server::builder()
        // Push-back under overload: what an agent may send before the hub reads it is bounded per stream and
        // per connection (a report is ~100 bytes; 64 KiB is hundreds in flight). With hyper's defaults a hub
        // past its ingest ceiling buffered up to a MiB per agent and its memory grew without bound; with
        // these it reads no faster than it stores, and the rest waits in the agents' outboxes.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(2 * STREAM_WINDOW))
        // Streams at a time per connection; a client queues the rest. Unlimited (tonic's default), a burst of
        // small calls ran out h2's budget for unread small DATA frames (half the connection window) and the
        // hub closed the connection with ENHANCE_YOUR_CALM: 1,000 concurrent calls, 1,000 transport errors.
        .max_concurrent_streams(Some(MAX_STREAMS))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Plain HTTPS routes on the same port (the agentd binaries new servers fetch).
        .add_routes(tonic::service::Routes::from(http))
        .add_service(
            EnrollmentServer::new(agents.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AgentLinkServer::new(agents)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            // Answers grow with the fleet (ListServers is ~500 B a server) until it is paginated; requests stay
            // bounded at 1 MiB. The watch stream sends its snapshot in bounded parts.
            OperatorServer::new(operator)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(64 << 20),
        );
    // TLS is done by `tls::incoming` (its certificate can be replaced while the hub serves); tonic sees the
    // TLS streams, so `Request::peer_certs` works as with its own TLS.
    let incoming = tls::incoming(listener, tls, shutdown.clone());
    let serve = router.serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await });
    Ok(tokio::spawn(async move { serve.await.map_err(|e| e.to_string()) }))
}
