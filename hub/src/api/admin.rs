//! The `hubd` admin commands' calls to the running hub's operator API, with a five-minute admin
//! certificate minted in memory from the CA on disk.

use std::time::Duration;

use outpost_common::Role;
use outpost_proto::v1 as pb;
use pb::operator_client::OperatorClient;

use std::path::PathBuf;

use crate::cli::{CaCmd, Cli, Command, OperatorCmd, ReleaseCmd, RotateCmd, TokenCmd, issue_bundle, load_ca};
use crate::config::HubConfig;

async fn admin_client(config: &HubConfig) -> anyhow::Result<(OperatorClient<tonic::transport::Channel>, String)> {
    let ca = load_ca(config)?;
    let bundle = issue_bundle(config, &ca.keys(), "hubd-cli", Role::Admin, Duration::from_secs(300))?;
    let client = OperatorClient::new(bundle.channel()?);
    Ok((client, bundle.meta.hub))
}

fn rpc_error(hub: &str, s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable {
        anyhow::anyhow!(
            "hubd not reachable at {hub} ({}) — is it running? (`systemctl status outpost-hubd`)",
            outpost_common::tls::transport_reason(&s)
        )
    } else {
        anyhow::anyhow!("{}", s.message())
    }
}

/// Runs an admin command; returns what to print.
pub async fn admin(cli: &Cli, config: &HubConfig) -> anyhow::Result<String> {
    match cli.command.as_ref() {
        Some(Command::Release(ReleaseCmd::Add { file, signature })) => {
            let keys = config.releases.keys().map_err(anyhow::Error::msg)?;
            let sig = signature.clone().unwrap_or_else(|| PathBuf::from(format!("{}.minisig", file.display())));
            crate::lifecycle::artifacts::add_release(
                &config.artifacts_dir(),
                file,
                &sig,
                &keys,
                config.releases.zstd_level,
            )
            .map_err(anyhow::Error::msg)
        }
        Some(Command::Release(ReleaseCmd::List)) => {
            crate::lifecycle::artifacts::list_releases(&config.artifacts_dir()).map_err(anyhow::Error::msg)
        }
        Some(Command::Token(TokenCmd::Create(a))) => {
            let (mut client, hub) = admin_client(config).await?;
            let req = pb::CreateJoinTokenRequest {
                server_name: a.server.clone(),
                ttl_secs: u32::try_from(a.ttl.as_secs()).unwrap_or(u32::MAX),
                customer: a.customer.clone(),
                plan: a.plan.clone(),
                labels: a.labels.iter().cloned().collect(),
                replace: a.replace,
            };
            let r = client.create_join_token(req).await.map_err(|s| rpc_error(&hub, s))?.into_inner();
            Ok(r.token)
        }
        Some(Command::Backup(args)) => {
            let seal = crate::backup::seal_of(args, config)?;
            let (mut client, hub) = admin_client(config).await?;
            let from_hub = match client.snapshot_store(pb::SnapshotStoreRequest {}).await {
                Ok(r) => Some(PathBuf::from(r.into_inner().path)),
                Err(s) if s.code() == tonic::Code::Unavailable => None,
                Err(s) => return Err(rpc_error(&hub, s)),
            };
            crate::backup::backup(&cli.config, config, args, seal, from_hub)
        }
        Some(Command::Ca(CaCmd::Rotate(cmd))) => {
            let (mut client, hub) = admin_client(config).await?;
            let (action, force) = match cmd {
                RotateCmd::Start => ("start", false),
                RotateCmd::Status => ("status", false),
                RotateCmd::Advance { force } => ("advance", *force),
                RotateCmd::Rollback => ("rollback", false),
            };
            let req = pb::CaRotationRequest { action: action.into(), force };
            let r = client.ca_rotation(req).await.map_err(|s| rpc_error(&hub, s))?.into_inner();
            Ok(outpost_common::cert::rotation_summary(&r).trim_end().to_string())
        }
        Some(Command::Revoke { server }) => {
            let (mut client, hub) = admin_client(config).await?;
            let req = pb::RevokeServerRequest { name: server.clone() };
            let r = client.revoke_server(req).await.map_err(|s| rpc_error(&hub, s))?.into_inner();
            Ok(format!("revoked certificate {} of {server}", r.revoked_serial))
        }
        Some(Command::Operator(OperatorCmd::Issue { name, role, out, ttl })) => {
            if ttl.as_secs() > config.operators.cert_max_ttl_secs {
                anyhow::bail!(
                    "--ttl {}d is over the ceiling of {}d ([operators] cert_max_ttl_secs in {}); operator bundles are short-lived: issue a new one when it expires",
                    ttl.as_secs() / 86_400,
                    config.operators.cert_max_ttl_secs / 86_400,
                    cli.config.display()
                );
            }
            let ca = load_ca(config)?;
            issue_bundle(config, &ca.keys(), name, *role, *ttl)?.write(out)?;
            Ok(format!("wrote operator bundle for {name} ({role}) to {}", out.display()))
        }
        Some(Command::Operator(OperatorCmd::List)) => {
            let (mut client, hub) = admin_client(config).await?;
            let r =
                client.list_operators(pb::ListOperatorsRequest {}).await.map_err(|s| rpc_error(&hub, s))?.into_inner();
            let mut out = format!("{:<24} {:<8} {:<24} {:<24} {}", "NAME", "ROLE", "EXPIRES", "LAST SEEN", "REVOKED");
            for o in r.operators.iter().filter(|o| o.name != "hubd-cli") {
                let ms = |ms: i64| if ms == 0 { "-".to_string() } else { outpost_common::when::utc(ms) };
                out.push_str(&format!(
                    "\n{:<24} {:<8} {:<24} {:<24} {}",
                    o.name,
                    if o.role.is_empty() { "-" } else { &o.role },
                    ms(o.not_after * 1000),
                    ms(o.last_seen_ms),
                    ms(o.revoked_ms)
                ));
            }
            Ok(out)
        }
        Some(Command::Operator(OperatorCmd::Revoke { name })) => {
            let (mut client, hub) = admin_client(config).await?;
            let req = pb::RevokeOperatorRequest { name: name.clone() };
            let r = client.revoke_operator(req).await.map_err(|s| rpc_error(&hub, s))?.into_inner();
            Ok(format!(
                "revoked operator {name}: every bundle issued until now is refused ({} live session(s) closed)",
                r.sessions_closed
            ))
        }
        Some(Command::Serve | Command::Init(_) | Command::Restore(_)) | None => {
            unreachable!("serve, init and restore are handled by main")
        }
    }
}
