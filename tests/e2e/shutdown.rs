//! Graceful shutdown: SIGTERM drains and exits cleanly, telling agents when to come back.

use std::time::{Duration, Instant};

use harness::{AgentProc, HubProc, is, watch_until};
use outpost_common::Role;
use outpost_proto::v1::Liveness;

fn sigterm(pid: u32) {
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
}

async fn exits_cleanly_within(child: &mut tokio::process::Child, limit: Duration) -> Duration {
    let t = Instant::now();
    let status = tokio::time::timeout(limit, child.wait()).await.expect("exit within the limit").unwrap();
    assert!(status.success(), "exit status {status}");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_hub_and_agent() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let mut agent = AgentProc::start(tmp.path(), "sd-1", &hub.token("sd-1").await, "");
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "agent reporting", |f| is(f, "sd-1", Liveness::Connected) && f["sd-1"].reports_received > 0)
        .await;
    drop(ops);

    sigterm(hub.child.id().unwrap());
    // Well inside the 10 s drain deadline: nothing held the drain open.
    let took = exits_cleanly_within(&mut hub.child, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5));
    let agent_log = || std::fs::read_to_string(tmp.path().join("sd-1/agentd.log")).unwrap();
    let deadline = Instant::now() + harness::WAIT;
    while !agent_log().contains("hub shutting down") {
        assert!(Instant::now() < deadline, "the agent never got the reconnect hint:\n{}", agent_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    sigterm(agent.child.id().unwrap());
    exits_cleanly_within(&mut agent.child, Duration::from_secs(10)).await;
    assert!(agent_log().contains("agentd stopped"), "{}", agent_log());
}
