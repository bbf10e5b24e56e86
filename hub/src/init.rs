//! `hubd init`: a new installation's first run. It asks what it must (or takes flags, for automation),
//! validates every answer, writes `hubd.toml`, creates the fleet CA and the first admin's bundle, and says
//! what to do next. It never touches an existing installation.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use outpost_common::Role;

use crate::cli::InitArgs;
use crate::config::HubConfig;

/// What `hubd init` decided.
struct Answers {
    listen: SocketAddr,
    advertise: String,
    data_dir: PathBuf,
    store: String,
    postgres_url: String,
    postgres_password_file: Option<PathBuf>,
    admin: String,
    bundle_out: PathBuf,
}

/// Asks on a terminal, one question at a time: a default in brackets, re-asked until the answer checks out.
struct Prompt<'a> {
    input: Option<&'a mut dyn BufRead>,
    out: &'a mut dyn Write,
}

impl Prompt<'_> {
    fn ask<T>(
        &mut self,
        question: &str,
        given: Option<String>,
        default: String,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> anyhow::Result<T> {
        if let Some(v) = given {
            return check(&v).map_err(|e| anyhow::anyhow!("{question}: {e}"));
        }
        let Some(input) = self.input.as_mut() else {
            return check(&default).map_err(|e| anyhow::anyhow!("{question} (default {default:?}): {e}"));
        };
        loop {
            write!(self.out, "{question} [{default}]: ")?;
            self.out.flush()?;
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                anyhow::bail!("no answer to {question:?} (end of input)");
            }
            let answer = line.trim();
            let answer = if answer.is_empty() { default.as_str() } else { answer };
            match check(answer) {
                Ok(v) => return Ok(v),
                Err(e) => writeln!(self.out, "  {e}; try again")?,
            }
        }
    }
}

fn check_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an address and port (e.g. 0.0.0.0:7443)"))
}

fn check_advertise(s: &str) -> Result<String, String> {
    outpost_common::tls::HubAddr::parse_list(s)
        .map(|a| outpost_common::tls::HubAddr::join(&a))
        .map_err(|e| e.to_string())
}

fn check_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(format!("{s:?} is not an absolute path"));
    }
    Ok(p)
}

fn check_name(s: &str) -> Result<String, String> {
    if outpost_common::cert::valid_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} must be 1-63 of a-z, 0-9 and '-'"))
    }
}

/// Why `hubd init` will not run here, if it will not.
fn existing(config: &Path, data_dir: &Path) -> Option<String> {
    if config.exists() {
        return Some(format!("{} exists", config.display()));
    }
    ["ca/ca.key", "store.redb", "store"]
        .iter()
        .map(|f| data_dir.join(f))
        .find(|p| p.exists())
        .map(|p| format!("{} exists", p.display()))
}

/// Runs `hubd init`; returns what to print.
pub fn init(config_path: &Path, flags: &HubConfig, given: &Given, args: &InitArgs) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let interactive = !args.non_interactive && stdin.is_terminal();
    let mut lock = stdin.lock();
    let mut stdout = std::io::stdout();
    let mut prompt = Prompt { input: interactive.then_some(&mut lock as &mut dyn BufRead), out: &mut stdout };
    if interactive {
        writeln!(prompt.out, "Setting up an Outpost hub; Enter keeps the default in brackets.")?;
    }
    let listen = prompt.ask(
        "Address to listen on (agents, enrollment and operators share it)",
        given.listen.map(|l| l.to_string()),
        flags.listen.to_string(),
        check_listen,
    )?;
    let default_advertise = match listen.ip().is_unspecified() {
        true => format!("https://{}:{}", hostname(), listen.port()),
        false => format!("https://{listen}"),
    };
    let advertise = prompt.ask(
        "Address agents and operators reach this hub at (goes into join tokens)",
        given.advertise.clone(),
        default_advertise,
        check_advertise,
    )?;
    let data_dir = prompt.ask(
        "Data directory (store, CA)",
        given.data_dir.as_ref().map(|d| d.display().to_string()),
        flags.data_dir.display().to_string(),
        check_dir,
    )?;
    if let Some(why) = existing(config_path, &data_dir) {
        anyhow::bail!(
            "an installation exists here ({why}); `hubd init` never overwrites one. Edit {} instead, or remove it and the data directory to start over",
            config_path.display()
        );
    }
    let store = prompt.ask(
        "Store (redb: one hub; postgres: several replicas)",
        args.store.clone(),
        "redb".into(),
        |s| match s {
            "redb" | "postgres" => Ok(s.to_string()),
            _ => Err(format!("{s:?} is neither redb nor postgres")),
        },
    )?;
    let (postgres_url, postgres_password_file) = if store == "postgres" {
        let url = prompt.ask(
            "PostgreSQL connection (libpq string or URL, no password)",
            args.postgres_url.clone(),
            "host=localhost user=outpost dbname=outpost".into(),
            |s| {
                if s.contains("password") {
                    Err("leave the password out; it goes in a 0600 file".to_string())
                } else if s.trim().is_empty() {
                    Err("empty".to_string())
                } else {
                    Ok(s.to_string())
                }
            },
        )?;
        let file = prompt.ask(
            "File holding the database password (0600)",
            args.postgres_password_file.as_ref().map(|p| p.display().to_string()),
            "/etc/outpost/postgres-password".into(),
            check_dir,
        )?;
        (url, Some(file))
    } else {
        (String::new(), None)
    };
    let admin = prompt.ask("The first admin's name", args.admin.clone(), "admin".into(), check_name)?;
    let default_bundle = config_path.parent().unwrap_or(Path::new(".")).join(format!("{admin}-bundle"));
    let bundle_out = prompt.ask(
        "Where the admin's bundle goes",
        args.bundle_out.as_ref().map(|p| p.display().to_string()),
        default_bundle.display().to_string(),
        check_dir,
    )?;
    if bundle_out.exists() {
        anyhow::bail!("{} exists; give another --bundle-out", bundle_out.display());
    }
    let a = Answers { listen, advertise, data_dir, store, postgres_url, postgres_password_file, admin, bundle_out };
    write(config_path, &a)
}

/// The global flags the command line gave (they answer their questions).
pub struct Given {
    pub listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub data_dir: Option<PathBuf>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn write(config_path: &Path, a: &Answers) -> anyhow::Result<String> {
    let mut toml = format!(
        "# Written by `hubd init`. Every key and its default: README, \"Running it for real\".\n\
         listen = \"{}\"\n\
         advertise = \"{}\"\n\
         data_dir = \"{}\"\n\n\
         [store]\nkind = \"{}\"\n",
        a.listen,
        a.advertise,
        a.data_dir.display(),
        a.store
    );
    if let Some(pw) = &a.postgres_password_file {
        toml.push_str(&format!(
            "\n[store.postgres]\nurl = {:?}\npassword_file = \"{}\"\n",
            a.postgres_url,
            pw.display()
        ));
    }
    // The file must load as hubd will load it, before anything is created.
    let config: HubConfig = outpost_common::config::from_toml(&toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = config_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    outpost_common::private_dir(&a.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", a.data_dir.display()))?;
    let pki = crate::pki::rotation::Pki::open(&a.data_dir.join("ca"), None)?;
    let bundle = crate::cli::issue_bundle(
        &config,
        &pki.keys(),
        &a.admin,
        Role::Admin,
        std::time::Duration::from_secs(config.operators.cert_max_ttl_secs),
    )?;
    bundle.write(&a.bundle_out)?;
    // The config last: an interrupted init leaves no config, so it can run again.
    crate::pki::ca::write_public(config_path, toml.as_bytes())?;
    Ok(format!(
        "Wrote {config}, created the fleet CA in {ca} (pin {pin}) and {admin}'s admin bundle in {bundle}.\n\n\
         Next:\n\
         1. Start the hub:       systemctl enable --now outpost-hubd   (or: hubd --config {config})\n\
         2. On your own machine: outpost login {bundle}   (then `outpost` opens the console)\n\
         3. A first server:      hubd token create --server web-1   prints a one-time join token; on the\n\
         \x20  server, install agentd (the Debian package, or cloud-init user-data from the README) and run\n\
         \x20  agentd enroll --token TOKEN   (or write the token to /etc/outpost/join-token)\n",
        config = config_path.display(),
        ca = a.data_dir.join("ca").display(),
        pin = pki.keys().token_pin(),
        admin = a.admin,
        bundle = a.bundle_out.display(),
    ))
}
