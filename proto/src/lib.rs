//! The Outpost gRPC contract, package `outpost.v1`: the `.proto` file and the code generated from it.
//!
//! No logic lives here. Only the gRPC edge modules of hub, agent and console import these types; the
//! domain converts at that edge.

/// Generated from `proto/outpost/v1/outpost.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)] // generated code
    tonic::include_proto!("outpost.v1");
}

/// Largest encoded message either side accepts (1 MiB). Reports are a few KiB; CSRs and certificate chains
/// a few KiB; nothing legitimate comes near this.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// What an output update costs against the output window (`Welcome.output_window`) besides its bytes, so
/// that many tiny updates (a follow of short lines) are bounded as well as a few big ones.
pub const OUTPUT_UPDATE_COST: u64 = 64;

/// A health sample is a report body.
impl From<v1::Health> for v1::report::Body {
    fn from(h: v1::Health) -> Self {
        v1::report::Body::Health(h)
    }
}

/// An apps state is a report body.
impl From<v1::AppsState> for v1::report::Body {
    fn from(a: v1::AppsState) -> Self {
        v1::report::Body::Apps(a)
    }
}

/// A usage sample is a report body.
impl From<v1::UsageReport> for v1::report::Body {
    fn from(u: v1::UsageReport) -> Self {
        v1::report::Body::Usage(u)
    }
}
