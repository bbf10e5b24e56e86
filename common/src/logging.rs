//! Logging for the daemons: `tracing` to stderr and, when a directory is given, to daily-rolling files.

use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Rolled files kept per daemon.
const KEEP_FILES: usize = 7;

/// Keeps the file writer flushing; drop it last (at the end of `main`).
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>); // held for its Drop

/// `RUST_LOG` overrides `default_filter`. `to_stderr` is false for full-screen programs (the log would
/// tear the screen); they log to `log_dir` only.
pub fn init(name: &str, log_dir: Option<&Path>, default_filter: &str, to_stderr: bool) -> Result<LogGuard, String> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour only for a person at a terminal: stderr redirected to a file (or the journal) gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let stderr = to_stderr
        .then(|| tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).with_filter(filter()));
    let (file, guard) = match log_dir {
        Some(dir) => {
            let appender = tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix(name)
                .filename_suffix("log")
                .max_log_files(KEEP_FILES)
                .build(dir)
                .map_err(|e| format!("cannot log to {}: {e}", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer).with_filter(filter());
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(stderr).with(file).try_init().map_err(|e| e.to_string())?;
    Ok(LogGuard(guard))
}
