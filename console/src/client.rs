//! The hub client both the command line and the TUI use: which operator bundle (flag, environment,
//! `$XDG_CONFIG_HOME/outpost`), the gRPC client over its mTLS channel, and a hub's refusal in words.

use std::path::PathBuf;

use outpost_common::bundle::Bundle;
use outpost_proto::v1::operator_client::OperatorClient;
use serde::Deserialize;

use crate::args::Cli;

/// `$XDG_CONFIG_HOME/outpost/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleConfig {
    /// Operator bundle directory.
    bundle: Option<PathBuf>,
}

fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("outpost"))
}

pub fn bundle_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(b) = &cli.bundle {
        return Ok(b.clone());
    }
    let dir =
        config_dir().ok_or_else(|| anyhow::anyhow!("no --bundle given and neither XDG_CONFIG_HOME nor HOME is set"))?;
    let path = dir.join("config.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let c: ConsoleConfig = outpost_common::config::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{} is invalid: {e}", path.display()))?;
            Ok(c.bundle.unwrap_or_else(|| dir.join("bundle")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir.join("bundle")),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

pub fn load_bundle(cli: &Cli) -> anyhow::Result<Bundle> {
    let dir = bundle_dir(cli)?;
    Bundle::load(&dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(get a bundle with `hubd operator issue --name NAME --role viewer --out DIR`, then pass --bundle DIR)"
        )
    })
}

pub fn client(bundle: &Bundle) -> anyhow::Result<OperatorClient<tonic::transport::Channel>> {
    Ok(OperatorClient::new(bundle.channel()?).max_decoding_message_size(256 << 20))
}

pub fn rpc(bundle: &Bundle, s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable {
        let reason = outpost_common::tls::transport_reason(&s);
        return anyhow::anyhow!(
            "hub not reachable at {} ({reason}) — is hubd running? (`systemctl status outpost-hubd`)",
            bundle.meta.hub
        );
    }
    anyhow::anyhow!("hub {}: {}", bundle.meta.hub, outpost_common::text::inert(s.message()))
}
