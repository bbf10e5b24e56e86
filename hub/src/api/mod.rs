//! The gRPC edge: the only hub code (besides the relay, which speaks the agent protocol) that knows tonic
//! and the generated wire types. Requests become domain calls here; domain results and errors become
//! messages and statuses here (`error`, `convert`).

pub mod admin;
pub mod agent_link;
pub mod auth;
pub mod convert;
pub mod error;
pub mod operator;
