//! Running a program for an action: argv (never a shell string), stdin closed, stdout and stderr streamed
//! as they come, in its own process group so cancel and deadline stop everything it started.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::Ctx;

#[derive(Debug)]
pub enum Ended {
    Exited(std::process::ExitStatus),
    Cancelled,
    TimedOut,
    /// The program could not be started.
    Spawn(String),
}

/// After the program exits, how long to wait for pipes still held open by its children.
const DRAIN: Duration = Duration::from_millis(500);

pub async fn run(argv: &[String], ctx: &mut Ctx<'_>) -> Ended {
    let Some((program, args)) = argv.split_first() else {
        return Ended::Spawn("empty argv".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ended::Spawn(format!("cannot start {program:?}: {e}")),
    };
    let pid = child.id();
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let (mut bo, mut be) = (vec![0u8; 8192], vec![0u8; 8192]);
    let mut status = None;
    let mut drain_until = None;
    loop {
        if stdout.is_none() && stderr.is_none() && status.is_some() {
            break;
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => {
                kill_group(pid);
                let _ = child.wait().await;
                return Ended::Cancelled;
            }
            _ = tokio::time::sleep_until(ctx.deadline.into()) => {
                kill_group(pid);
                let _ = child.wait().await;
                return Ended::TimedOut;
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or(ctx.deadline).into()), if drain_until.is_some() => break,
            n = read(&mut stdout, &mut bo) => match n {
                Some(n) => ctx.out.bytes(&bo[..n]).await,
                None => stdout = None,
            },
            n = read(&mut stderr, &mut be) => match n {
                Some(n) => ctx.out.bytes(&be[..n]).await,
                None => stderr = None,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                drain_until = Some(std::time::Instant::now() + DRAIN);
            }
        }
    }
    // Children that kept the pipes open are stopped with the group.
    kill_group(pid);
    match status {
        Some(Ok(s)) => Ended::Exited(s),
        Some(Err(e)) => Ended::Spawn(format!("waiting for {program:?}: {e}")),
        None => Ended::Spawn("the program vanished".into()),
    }
}

/// One read; `None` at end of file (or when the pipe is gone). Pends forever when there is no pipe.
async fn read(pipe: &mut Option<impl AsyncReadExt + Unpin>, buf: &mut [u8]) -> Option<usize> {
    match pipe {
        Some(p) => match p.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        // ESRCH (already gone) is the common, harmless case.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// A one-line description of how a program ended, and its exit code (-1 when it had none).
pub fn describe(e: &Ended) -> (bool, i32, String) {
    use std::os::unix::process::ExitStatusExt;
    match e {
        Ended::Exited(s) if s.success() => (true, 0, "exited with status 0".into()),
        Ended::Exited(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (false, c, format!("exited with status {c}")),
            (None, Some(sig)) => (false, -1, format!("killed by signal {sig}")),
            _ => (false, -1, "ended abnormally".into()),
        },
        Ended::Cancelled => (false, -1, "cancelled".into()),
        Ended::TimedOut => (false, -1, "deadline reached; stopped".into()),
        Ended::Spawn(m) => (false, -1, m.clone()),
    }
}
