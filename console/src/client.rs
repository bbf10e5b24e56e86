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

/// The bundle, renewed first if the hub's CA moved on ([`follow_ca`]).
pub async fn bundle(cli: &Cli) -> anyhow::Result<Bundle> {
    Ok(follow_ca(cli, load_bundle(cli)?).await)
}

pub fn load_bundle(cli: &Cli) -> anyhow::Result<Bundle> {
    let dir = bundle_dir(cli)?;
    Bundle::load(&dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(get a bundle with `hubd operator issue --name NAME --role viewer --out DIR`, then pass --bundle DIR)"
        )
    })
}

/// The bundle, renewed first when the hub's CA moved on (a rotation in progress or just finished): a
/// certificate from the CA that signs now, trusting the CAs the hub trusts, written back where it was. Best
/// effort: when the hub cannot be asked, the bundle is used as it is (the command then says why).
pub async fn follow_ca(cli: &Cli, bundle: Bundle) -> Bundle {
    match renew_if_behind(cli, &bundle).await {
        Ok(Some(renewed)) => renewed,
        Ok(None) => bundle,
        Err(e) => {
            eprintln!("outpost: could not renew the bundle for the hub's new fleet CA ({e}); using it as it is");
            bundle
        }
    }
}

async fn renew_if_behind(cli: &Cli, bundle: &Bundle) -> anyhow::Result<Option<Bundle>> {
    use outpost_common::cert::{check_ca_bundle, key_and_csr, pins_of};
    use outpost_proto::v1::{RenewOperatorRequest, WhoAmIRequest};
    let mut c = client(bundle)?;
    let who = match c.who_am_i(WhoAmIRequest {}).await {
        Ok(w) => w.into_inner(),
        // Not reachable, or refused: the command itself will say so.
        Err(_) => return Ok(None),
    };
    let issuer = pins_of(&bundle.cert_pem).get(1).cloned().unwrap_or_default();
    if who.signing_pin.is_empty() || (pins_of(&bundle.ca_pem) == who.ca_pins && issuer == who.signing_pin) {
        return Ok(None);
    }
    let (key, csr_pem) = key_and_csr().map_err(anyhow::Error::msg)?;
    let r = c.renew_operator(RenewOperatorRequest { csr_pem }).await.map_err(|s| rpc(bundle, s))?.into_inner();
    check_ca_bundle(&r.ca_bundle_pem).map_err(anyhow::Error::msg)?;
    let renewed = Bundle {
        meta: bundle.meta.clone(),
        ca_pem: r.ca_bundle_pem,
        cert_pem: r.cert_chain_pem,
        key_pem: key.serialize_pem(),
    };
    let dir = bundle_dir(cli)?;
    renewed.write(&dir)?;
    eprintln!("outpost: the hub's fleet CA is rotating; bundle {} renewed", dir.display());
    Ok(Some(renewed))
}

pub fn client(bundle: &Bundle) -> anyhow::Result<OperatorClient<tonic::transport::Channel>> {
    Ok(OperatorClient::new(bundle.channel()?).max_decoding_message_size(256 << 20))
}

pub fn rpc(bundle: &Bundle, s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable {
        let reason = outpost_common::tls::transport_reason(&s);
        if reason.contains("UnknownIssuer") || reason.contains("UnknownCA") {
            return anyhow::anyhow!(
                "the hub at {} and this bundle do not trust the same fleet CA ({reason}): the CA was rotated since this bundle was last used. Ask an admin for a new bundle (`hubd operator issue`)",
                bundle.meta.hub
            );
        }
        return anyhow::anyhow!(
            "hub not reachable at {} ({reason}) — is hubd running? (`systemctl status outpost-hubd`)",
            bundle.meta.hub
        );
    }
    if s.message() == "transport error" {
        return anyhow::anyhow!(
            "hub {}: the connection was refused during its TLS handshake. If the fleet CA was rotated since this bundle was last used, ask an admin for a new bundle (`hubd operator issue`)",
            bundle.meta.hub
        );
    }
    anyhow::anyhow!("hub {}: {}", bundle.meta.hub, outpost_common::text::inert(s.message()))
}
