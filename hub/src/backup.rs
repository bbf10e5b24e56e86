//! Hub backups: a consistent copy of the embedded store (taken by the running hub: `store::Snapshot`), the
//! fleet CA's files and the config, in one file encrypted with age (a passphrase, or X25519 recipients): the
//! CA key is in it. Restored onto a fresh data directory, agents reconnect without re-enrolling (same CA,
//! same addresses) and pending commands and lifecycle jobs go on.
//!
//! Inside the encryption: `outpost-hub-backup 1\n`, a JSON manifest line (the hub's version, when, each file's
//! name, size and SHA-256), then each file's bytes in the manifest's order.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Copies of the store the running hub takes for backups (`DATA/backups`, 0700; each file 0600).
pub struct Snapshots {
    store: std::sync::Arc<dyn crate::store::HubStore>,
    dir: PathBuf,
    one: tokio::sync::Mutex<()>,
}

impl Snapshots {
    pub fn new(store: std::sync::Arc<dyn crate::store::HubStore>, data_dir: &Path) -> Snapshots {
        Snapshots { store, dir: data_dir.join("backups"), one: Default::default() }
    }

    /// A consistent copy of the store, one at a time; copies older than an hour (their backup failed
    /// without deleting them) are removed first.
    pub async fn take(&self) -> Result<(PathBuf, u64), crate::error::HubError> {
        let _one = self.one.lock().await;
        let internal = |e: String| crate::error::HubError::Internal(e);
        outpost_common::private_dir(&self.dir).map_err(|e| internal(format!("{}: {e}", self.dir.display())))?;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            for e in entries.flatten() {
                if e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < hour_ago) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let path = self.dir.join(format!("store-{}.redb", outpost_common::now_ms()));
        let bytes = self.store.snapshot(&path).await.map_err(|e| {
            let _ = std::fs::remove_file(&path);
            internal(e.to_string())
        })?;
        Ok((path, bytes))
    }
}

/// `[backup]`: a backup every `every_secs` into `dir`, encrypted to its recipients, the newest `keep` kept.
pub struct Schedule {
    pub snapshots: std::sync::Arc<Snapshots>,
    pub ca_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub dir: PathBuf,
    pub keep: u32,
    pub recipients: Vec<age::pq::Recipient>,
}

impl Schedule {
    /// One scheduled backup; its path.
    pub async fn run(&self) -> anyhow::Result<PathBuf> {
        outpost_common::private_dir(&self.dir).map_err(|e| anyhow::anyhow!("{}: {e}", self.dir.display()))?;
        let (snapshot, _) = self.snapshots.take().await?;
        let out = self.dir.join(format!("hub-{}.backup", outpost_common::now_ms()));
        let (files, seal) =
            (files(&snapshot, &self.ca_dir, self.config.as_deref()), Seal::Recipients(self.recipients.clone()));
        let target = out.clone();
        let written = tokio::task::spawn_blocking(move || write(&target, &files?, &seal)).await;
        let _ = std::fs::remove_file(&snapshot);
        written.map_err(|e| anyhow::anyhow!("{e}"))??;
        // The newest `keep` stay (names sort by time).
        let mut ours: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("hub-") && n.ends_with(".backup"))
            })
            .collect();
        ours.sort();
        let extra = ours.len().saturating_sub(self.keep as usize);
        for old in &ours[..extra] {
            let _ = std::fs::remove_file(old);
        }
        Ok(out)
    }
}

const MAGIC: &str = "outpost-hub-backup 1";
/// The manifest line, at most.
const MAX_MANIFEST: u64 = 1 << 20;
const MAX_FILES: usize = 1000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub hub_version: String,
    pub created_ms: i64,
    pub files: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// `store.redb`, `hubd.toml`, or `ca/…`.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    /// Written 0600 on restore (keys, the store).
    pub private: bool,
}

/// What a backup is encrypted with.
pub enum Seal {
    Passphrase(String),
    Recipients(Vec<age::pq::Recipient>),
}

/// What opens a backup.
pub enum Unseal {
    Passphrase(String),
    Identities(Vec<age::pq::Identity>),
}

/// A passphrase from a file only its owner can read (`common::config::read_secret_file`; its first line).
pub fn passphrase_file(path: &Path) -> anyhow::Result<String> {
    let text = outpost_common::config::read_secret_file(path, "--passphrase-file").map_err(anyhow::Error::msg)?;
    let pass = text.lines().next().unwrap_or("").to_string();
    if pass.len() < 8 {
        anyhow::bail!("the passphrase in {} is shorter than 8 characters", path.display());
    }
    Ok(pass)
}

fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        ctx.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, outpost_common::cert::hex(ctx.finish().as_ref())))
}

/// The files of a backup: (name in the backup, where it is now, private).
pub fn files(store_copy: &Path, ca_dir: &Path, config: Option<&Path>) -> anyhow::Result<Vec<(String, PathBuf, bool)>> {
    let mut out = vec![("store.redb".to_string(), store_copy.to_path_buf(), true)];
    let mut stack = vec![ca_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
        for e in entries {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                stack.push(path);
            } else if path.extension().is_none_or(|x| x != "tmp") {
                let rel = path.strip_prefix(ca_dir).expect("under the CA directory").display().to_string();
                let private = path.extension().is_some_and(|x| x == "key");
                out.push((format!("ca/{rel}"), path, private));
            }
        }
    }
    if let Some(c) = config.filter(|c| c.exists()) {
        out.push(("hubd.toml".into(), c.to_path_buf(), false));
    }
    Ok(out)
}

/// Writes the backup of `files` to `out` (0600, replaced atomically), sealed with `seal`. Returns its size.
pub fn write(out: &Path, files: &[(String, PathBuf, bool)], seal: &Seal) -> anyhow::Result<u64> {
    let mut entries = Vec::new();
    for (name, path, private) in files {
        let (bytes, sha256) = sha256_file(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        entries.push(Entry { name: name.clone(), bytes, sha256, private: *private });
    }
    let manifest = Manifest {
        hub_version: env!("CARGO_PKG_VERSION").into(),
        created_ms: outpost_common::now_ms(),
        files: entries,
    };
    let tmp = out.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", tmp.display()))?;
    let written = (|| -> anyhow::Result<()> {
        let encryptor = match seal {
            Seal::Passphrase(p) => age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(p.clone())),
            Seal::Recipients(r) => age::Encryptor::with_recipients(r.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        let mut w = encryptor.wrap_output(std::io::BufWriter::new(file))?;
        writeln!(w, "{MAGIC}")?;
        serde_json::to_writer(&mut w, &manifest)?;
        writeln!(w)?;
        for ((_, path, _), entry) in files.iter().zip(&manifest.files) {
            let n = std::io::copy(&mut std::fs::File::open(path)?.take(entry.bytes), &mut w)?;
            anyhow::ensure!(n == entry.bytes, "{} changed while it was backed up", path.display());
        }
        let buffered = w.finish()?;
        let file = buffered.into_inner().map_err(|e| anyhow::anyhow!("{}", e.error()))?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    Ok(std::fs::metadata(out)?.len())
}

/// A backup's version against this hubd's: a newer one is refused (its store may hold what this one cannot
/// read); an older one is restored and migrated by the hub at its next start.
fn check_version(theirs: &str) -> anyhow::Result<()> {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let mut p = v.split('.').map(|x| x.parse::<u64>().ok());
        Some((p.next()??, p.next()??, p.next()??))
    };
    let ours = env!("CARGO_PKG_VERSION");
    let (Some(t), Some(o)) = (parse(theirs), parse(ours)) else {
        anyhow::bail!("the backup says it was made by hubd {theirs:?}, not a version this hubd understands");
    };
    if t > o {
        anyhow::bail!(
            "this backup was made by hubd {theirs}, newer than this hubd {ours}: restore it with hubd {theirs} or newer"
        );
    }
    Ok(())
}

/// A name a backup may hold, as a relative path under the data directory (or the config).
fn valid_name(name: &str) -> bool {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    let parts_ok = name.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    ok_chars && parts_ok && (name == "store.redb" || name == "hubd.toml" || name.starts_with("ca/"))
}

/// Opens `backup` with `unseal` and writes its files under `staging` (a new directory, 0700). Returns the
/// manifest. Nothing is written outside `staging`; a damaged or altered backup is refused in words.
pub fn unpack(backup: &Path, unseal: &Unseal, staging: &Path) -> anyhow::Result<Manifest> {
    let file = std::fs::File::open(backup).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", backup.display()))?;
    let not_a_backup = || anyhow::anyhow!("{} is not an Outpost hub backup (not an age file)", backup.display());
    let decryptor = age::Decryptor::new_buffered(BufReader::new(file)).map_err(|_| not_a_backup())?;
    let reader = match unseal {
        Unseal::Passphrase(p) => {
            let id = age::scrypt::Identity::new(age::secrecy::SecretString::from(p.clone()));
            decryptor.decrypt(std::iter::once(&id as &dyn age::Identity))
        }
        Unseal::Identities(ids) => decryptor.decrypt(ids.iter().map(|i| i as &dyn age::Identity)),
    }
    .map_err(|e| match e {
        age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => {
            anyhow::anyhow!("this passphrase or key does not open {}", backup.display())
        }
        other => anyhow::anyhow!("{} cannot be opened: {other} (damaged or altered?)", backup.display()),
    })?;
    let damaged = |e: std::io::Error| anyhow::anyhow!("{} is damaged or was altered: {e}", backup.display());
    let mut r = BufReader::new(reader);
    let mut line = String::new();
    (&mut r).take(64).read_line(&mut line).map_err(damaged)?;
    if line.trim_end() != MAGIC {
        anyhow::bail!("{} is an age file but not an Outpost hub backup", backup.display());
    }
    line.clear();
    (&mut r).take(MAX_MANIFEST).read_line(&mut line).map_err(damaged)?;
    let manifest: Manifest =
        serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("the backup's manifest is invalid: {e}"))?;
    check_version(&manifest.hub_version)?;
    anyhow::ensure!(manifest.files.len() <= MAX_FILES, "the backup lists {} files", manifest.files.len());
    if let Some(bad) = manifest.files.iter().find(|f| !valid_name(&f.name)) {
        anyhow::bail!("the backup holds a file named {:?}, which no hub backup has", bad.name);
    }
    std::fs::create_dir(staging).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", staging.display()))?;
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))?;
    for f in &manifest.files {
        let path = staging.join(&f.name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mode = if f.private { 0o600 } else { 0o644 };
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&path)?;
        let mut hasher = HashingWriter { inner: &mut out, ctx: ring::digest::Context::new(&ring::digest::SHA256) };
        let n = std::io::copy(&mut (&mut r).take(f.bytes), &mut hasher).map_err(damaged)?;
        if n != f.bytes || outpost_common::cert::hex(hasher.ctx.finish().as_ref()) != f.sha256 {
            anyhow::bail!("{} is damaged: {} does not match its checksum", backup.display(), f.name);
        }
        out.sync_all()?;
    }
    // The encryption's last chunk authenticates the end: nothing may be cut or appended.
    let mut rest = Vec::new();
    (&mut r).take(1).read_to_end(&mut rest).map_err(damaged)?;
    anyhow::ensure!(rest.is_empty(), "{} holds more than its manifest lists", backup.display());
    Ok(manifest)
}

struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    ctx: ring::digest::Context,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An age identity file: its `AGE-SECRET-KEY-PQ-1…` lines (the file must be 0600).
fn identity_file(path: &Path) -> anyhow::Result<Vec<age::pq::Identity>> {
    let text = outpost_common::config::read_secret_file(path, "--identity").map_err(anyhow::Error::msg)?;
    let ids: Vec<age::pq::Identity> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.parse().map_err(|_| anyhow::anyhow!("{} holds a line that is not an age identity", path.display())))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!ids.is_empty(), "{} holds no age identity", path.display());
    Ok(ids)
}

/// What `hubd backup` encrypts with, from its flags; and whether this hub's store can be backed up so.
pub fn seal_of(args: &crate::cli::BackupArgs, config: &crate::HubConfig) -> anyhow::Result<Seal> {
    if !config.store.kind.embedded() {
        anyhow::bail!(
            "this hub's store is PostgreSQL: back the database up with pg_dump, and DATA/ca and hubd.toml with it (README, \"Backup and restore\")"
        );
    }
    Ok(match (&args.passphrase_file, args.recipients.as_slice()) {
        (Some(f), []) => Seal::Passphrase(passphrase_file(f)?),
        (None, r) if !r.is_empty() => Seal::Recipients(
            r.iter()
                .map(|r| r.parse().map_err(|e| anyhow::anyhow!("--recipient {r:?} is not an age recipient: {e}")))
                .collect::<anyhow::Result<_>>()?,
        ),
        _ => {
            anyhow::bail!("say how to encrypt the backup: --passphrase-file FILE, or --recipient age1pq1… (repeatable)")
        }
    })
}

/// `hubd backup`: the store's copy `from_hub` made by the running hub (`None`: hubd is not running, and the
/// store is copied here), packed with the CA and the config, encrypted. Returns what to print.
pub fn backup(
    config_path: &Path,
    config: &crate::HubConfig,
    args: &crate::cli::BackupArgs,
    seal: Seal,
    from_hub: Option<PathBuf>,
) -> anyhow::Result<String> {
    let (snapshot, by) = match from_hub {
        Some(p) => (p, "copied by the running hub"),
        None => {
            // redb refuses a store another process has open: this never copies under a running hub.
            let store = config.data_dir.join("store.redb");
            anyhow::ensure!(store.exists(), "hubd is not reachable, and {} does not exist", store.display());
            let engine = crate::store::redb::RedbEngine::open(&store, 16)
                .map_err(|e| anyhow::anyhow!("hubd is not reachable and its store cannot be opened here: {e}"))?;
            let dir = config.data_dir.join("backups");
            outpost_common::private_dir(&dir)?;
            let path = dir.join(format!("store-{}.redb", outpost_common::now_ms()));
            crate::store::kv::Engine::snapshot(&engine, &path)?;
            (path, "copied with hubd stopped")
        }
    };
    let files = files(&snapshot, &config.data_dir.join("ca"), Some(config_path));
    let written = files.and_then(|f| {
        let store = std::fs::metadata(&snapshot)?.len();
        let n = write(&args.out, &f, &seal)?;
        Ok((n, store, f.len()))
    });
    let _ = std::fs::remove_file(&snapshot);
    let (bytes, store, count) = written?;
    Ok(format!(
        "wrote {} ({:.1} MB, encrypted {}): the store ({:.1} MB, {by}), the fleet CA and hubd.toml ({} files), hubd {}.\nRestore it with `hubd restore {}` onto an empty data directory.",
        args.out.display(),
        bytes as f64 / 1e6,
        if matches!(seal, Seal::Passphrase(_)) { "with the passphrase" } else { "to its recipients" },
        store as f64 / 1e6,
        count,
        env!("CARGO_PKG_VERSION"),
        args.out.display()
    ))
}

/// `hubd restore`: the backup unpacked next to the data directory, checked whole, then moved into it.
pub fn restore(
    config_path: &Path,
    data_dir_flag: Option<&Path>,
    args: &crate::cli::RestoreArgs,
) -> anyhow::Result<String> {
    let unseal = match (&args.passphrase_file, &args.identity) {
        (Some(f), None) => Unseal::Passphrase(passphrase_file(f)?),
        (None, Some(f)) => Unseal::Identities(identity_file(f)?),
        _ => anyhow::bail!("say how to open the backup: --passphrase-file FILE or --identity FILE"),
    };
    let existing = config_path.exists();
    let data_dir = match (data_dir_flag, existing) {
        (Some(d), _) => d.to_path_buf(),
        (None, true) => crate::HubConfig::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?.data_dir,
        (None, false) => crate::HubConfig::default().data_dir,
    };
    for held in ["store.redb", "store", "ca/ca.key"] {
        if data_dir.join(held).exists() {
            anyhow::bail!(
                "{} already holds a hub ({held}); restore only onto an empty data directory: stop hubd and move it aside first",
                data_dir.display()
            );
        }
    }
    if let Some(parent) = data_dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    let staging = PathBuf::from(format!("{}.restoring", data_dir.display()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let manifest = match unpack(&args.file, &unseal, &staging) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    outpost_common::private_dir(&data_dir)?;
    std::fs::rename(staging.join("store.redb"), data_dir.join("store.redb"))?;
    std::fs::rename(staging.join("ca"), data_dir.join("ca"))?;
    let config_note = match (staging.join("hubd.toml").exists(), existing) {
        (true, false) => {
            let text = std::fs::read_to_string(staging.join("hubd.toml"))?;
            let mut table: toml::Table =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("the backup's hubd.toml: {e}"))?;
            table.insert("data_dir".into(), toml::Value::String(data_dir.display().to_string()));
            if let Some(dir) = config_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            crate::pki::ca::write_public(config_path, toml::to_string(&table)?.as_bytes())?;
            format!("{} written from the backup (data_dir set to {})", config_path.display(), data_dir.display())
        }
        (true, true) => {
            let kept = PathBuf::from(format!("{}.from-backup", config_path.display()));
            std::fs::rename(staging.join("hubd.toml"), &kept)?;
            format!("{} kept; the backup's is {}", config_path.display(), kept.display())
        }
        (false, _) => "the backup holds no hubd.toml".into(),
    };
    let _ = std::fs::remove_dir_all(&staging);
    let pin = crate::pki::rotation::Pki::read(&data_dir.join("ca"), None)
        .map(|p| p.keys().token_pin().to_string())
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    Ok(format!(
        "restored the backup hubd {} took at {} into {} (fleet CA {pin}); {config_note}.\nStart hubd: agents reconnect without enrolling again when they reach it at the address they know (`advertise`).",
        manifest.hub_version,
        outpost_common::when::rfc3339(manifest.created_ms),
        data_dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Vec<(String, PathBuf, bool)> {
        std::fs::create_dir_all(dir.join("ca/retired")).unwrap();
        std::fs::write(dir.join("store"), vec![7u8; 300_000]).unwrap();
        std::fs::write(dir.join("ca/ca.pem"), "cert").unwrap();
        std::fs::write(dir.join("ca/ca.key"), "key").unwrap();
        std::fs::write(dir.join("ca/retired/abc.key"), "old").unwrap();
        std::fs::write(dir.join("hubd.toml"), "listen = \"0.0.0.0:7443\"\n").unwrap();
        files(&dir.join("store"), &dir.join("ca"), Some(&dir.join("hubd.toml"))).unwrap()
    }

    #[test]
    fn a_backup_round_trips_and_refuses_a_wrong_key_an_alteration_and_a_newer_hub() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample(dir.path());
        let out = dir.path().join("b.age");
        let pass = Seal::Passphrase("correct horse battery".into());
        write(&out, &files, &pass).unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        let m = unpack(&out, &Unseal::Passphrase("correct horse battery".into()), &dir.path().join("s1")).unwrap();
        assert_eq!(m.files.len(), 5);
        assert_eq!(std::fs::read(dir.path().join("s1/store.redb")).unwrap(), vec![7u8; 300_000]);
        assert_eq!(std::fs::read_to_string(dir.path().join("s1/ca/retired/abc.key")).unwrap(), "old");
        let mode = std::fs::metadata(dir.path().join("s1/ca/ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let err = unpack(&out, &Unseal::Passphrase("wrong horse".into()), &dir.path().join("s2")).unwrap_err();
        assert!(err.to_string().contains("does not open"), "{err}");
        let mut bytes = std::fs::read(&out).unwrap();
        let at = bytes.len() - 1000;
        bytes[at] ^= 1;
        std::fs::write(&out, &bytes).unwrap();
        let err =
            unpack(&out, &Unseal::Passphrase("correct horse battery".into()), &dir.path().join("s3")).unwrap_err();
        assert!(err.to_string().contains("damaged or was altered"), "{err}");

        let key = age::pq::Identity::generate();
        write(&out, &files, &Seal::Recipients(vec![key.to_public()])).unwrap();
        unpack(&out, &Unseal::Identities(vec![key]), &dir.path().join("s4")).unwrap();
        let other = age::pq::Identity::generate();
        assert!(unpack(&out, &Unseal::Identities(vec![other]), &dir.path().join("s5")).is_err());

        assert!(check_version("99.0.0").unwrap_err().to_string().contains("newer than this hubd"));
        check_version("0.0.1").unwrap();
        assert!(
            !valid_name("../etc/passwd") && !valid_name("ca/../../x") && !valid_name("other") && valid_name("ca/x.pem")
        );
    }
}
