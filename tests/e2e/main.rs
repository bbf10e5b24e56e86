//! Cross-process tests: real hubd and agentd processes on loopback, real mTLS, real sled.

mod actions;
mod alerts;
mod apps;
mod bad_input;
mod console;
mod enroll_ssh;
mod fanout;
mod fleet;
mod hostile;
mod hostile2;
mod hosts;
mod k3s;
mod metrics;
mod official;
mod ops;
mod provision;
mod releases;
mod renewal;
mod replicas;
mod shutdown;
mod sim;
mod ssh_repos;
mod timeline;
mod updates;
mod usage;
mod vendored;
