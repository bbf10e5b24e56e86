//! `outpost-standin`: runs a stand-in on loopback for a person or a script to look at with the official
//! clients (`kubectl --kubeconfig DIR/kubeconfig.yaml get pods -A`, `HCLOUD_ENDPOINT=… hcloud server list`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "outpost-standin", about = "Run a local stand-in of the Kubernetes or Hetzner Cloud API on loopback")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// A Kubernetes API server; writes DIR/kubeconfig.yaml.
    Kube {
        /// Where the kubeconfig is written.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Play a Deployment controller (rolling updates, pods through admission) with a Ready node.
        #[arg(long)]
        controller: bool,
    },
    /// The Hetzner Cloud API under http://ADDR/v1, taking the token given.
    Hetzner {
        /// The API token clients must send (`Authorization: Bearer TOKEN`).
        #[arg(long, env = "HCLOUD_TOKEN")]
        token: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.what {
        What::Kube { dir, controller } => {
            let k = if controller {
                standin::kube::KubeStandIn::start_with_controller(&dir).await
            } else {
                standin::kube::KubeStandIn::start(&dir).await
            };
            println!("kubeconfig {}", k.kubeconfig.display());
            println!("server http://{}", k.addr);
            let _ = tokio::signal::ctrl_c().await;
        }
        What::Hetzner { token } => {
            let h = standin::hetzner::HetznerStandIn::start(&token).await;
            println!("endpoint {}", h.url());
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
