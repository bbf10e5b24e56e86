//! The real `outpost` console in tmux, against a real hub with real agents.

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{AgentProc, HubProc, is, watch_until};
use outpost_common::Role;
use outpost_proto::v1::Liveness;

use crate::ops::{Tmux, tool, wait_for_pane};

fn keys(socket: &str, keys: &[&str]) {
    let ok = Command::new("tmux").args(["-L", socket, "send-keys", "-t", "demo"]).args(keys).status().unwrap();
    assert!(ok.success());
}

fn table_rows(screen: &str) -> Vec<&str> {
    screen.lines().filter(|l| l.contains("● connected")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_open_back_quit_in_tmux() {
    tool("tmux");
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let mut agents = Vec::new();
    for n in ["web-1", "web-2", "db-1"] {
        agents.push(AgentProc::start(tmp.path(), n, &hub.token(n).await, ""));
    }
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "three agents reporting", |f| {
        ["web-1", "web-2", "db-1"].iter().all(|n| is(f, n, Liveness::Connected) && f[*n].reports_received > 0)
    })
    .await;
    let bundle = tmp.path().join("viewer");
    hub.bundle("vera", Role::Viewer).write(&bundle).unwrap();

    let socket = format!("outpost-console-{}", std::process::id());
    let _tmux = Tmux(socket.clone());
    let cmd = format!("NO_COLOR=1 {} --bundle {}", harness::bin("outpost").display(), bundle.display());
    let ok = Command::new("tmux")
        .args(["-L", &socket, "new-session", "-d", "-s", "demo", "-x", "100", "-y", "30", &cmd])
        .status()
        .unwrap();
    assert!(ok.success());
    let screen = wait_for_pane(&socket, "3 servers  ● 3 connected");
    assert!(screen.contains("vera (viewer read-only)") && screen.contains("● live"), "{screen}");
    assert_eq!(table_rows(&screen).len(), 3, "{screen}");

    // Filter by text: only db-1 stays.
    keys(&socket, &["/", "db", "Enter"]);
    let screen = wait_for_pane(&socket, "filter: db");
    let rows = table_rows(&screen);
    assert!(rows.len() == 1 && rows[0].contains("db-1"), "{screen}");

    // Open it: the server view, with the viewer's (absent) actions.
    keys(&socket, &["Enter"]);
    let screen = wait_for_pane(&socket, "┌ identity");
    assert!(screen.contains("server      db-1") && screen.contains("none: read-only (viewer)"), "{screen}");
    assert!(screen.contains("k3s         absent"), "{screen}");

    // Back to the fleet (filter kept), then clear it.
    keys(&socket, &["Escape"]);
    let screen = wait_for_pane(&socket, "NAME");
    assert_eq!(table_rows(&screen).len(), 1, "{screen}");
    keys(&socket, &["Escape"]);
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let screen = wait_for_pane(&socket, "NAME");
        if table_rows(&screen).len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "filter not cleared:\n{screen}");
        std::thread::sleep(Duration::from_millis(50));
    }

    keys(&socket, &["q"]);
    let deadline = Instant::now() + harness::WAIT;
    while Command::new("tmux").args(["-L", &socket, "has-session", "-t", "demo"]).output().unwrap().status.success() {
        assert!(Instant::now() < deadline, "outpost did not exit after q");
        std::thread::sleep(Duration::from_millis(50));
    }
}
