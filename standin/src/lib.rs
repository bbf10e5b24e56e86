//! Stand-ins for services that cannot exist on a development or CI machine, each speaking the real wire
//! protocol so the product's real clients drive them: a Kubernetes API server (`kube`) and the Hetzner Cloud API (`hcloud`). The demo runs them
//! with a minimal controller; the tests play the controllers themselves. And one real server the tests
//! start for themselves: PostgreSQL ([`postgres`]).

pub mod hetzner;
pub mod kube;
pub mod postgres;
