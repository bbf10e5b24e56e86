//! outpost: the support console. [`state`] is the model (no ratatui), [`view`] draws it (no tonic),
//! [`conn`] keeps the hub stream alive, [`app`] is the one event loop. The demo is its own crate (`demo/`, `outpost-demo`), so this one links neither the hub nor the stand-ins.

pub mod app;
pub mod args;
pub mod client;
pub mod cmd;
pub mod conn;
pub mod format;
pub mod inert;
pub mod state;
pub mod view;
