//! Issue 8: the hub against a hostile agent (and a careless operator), played through the public gRPC
//! contract with the raw client in `harness::hostile`, never with agentd's own code.

use std::path::Path;
use std::time::Duration;

use harness::hostile::{self, RawLink, body, report, update};
use harness::{HubProc, WAIT};
use outpost_common::Role;
use outpost_proto::v1::{
    CommandResult, CommandUpdate, CreateJoinTokenRequest, Disk, Health, Hello, HostFacts, K3s, Outcome,
    QueryAuditRequest, RevokeOperatorRequest, RevokeServerRequest, WatchFleetRequest, agent_message, hub_message,
};
use tonic::Code;

async fn hub(tmp: &tempfile::TempDir, extra: &str) -> HubProc {
    harness::init();
    HubProc::start(&tmp.path().join("hub"), harness::free_port(), extra).await
}

fn token_req(server: &str, replace: bool) -> CreateJoinTokenRequest {
    CreateJoinTokenRequest { server_name: server.into(), ttl_secs: 600, replace, ..Default::default() }
}

/// Every class of character that must never reach a terminal raw.
const NASTY: &str =
    "a\u{1b}[2J\u{1b}]0;pwned\u{7}b\u{1b}[31mred\u{9b}1mc\u{202e}evil\u{2066}d\u{2069}e\u{200b}f\u{feff}g\u{0}\r";

fn has_unsafe(s: &str) -> Option<char> {
    s.chars().find(|&c| outpost_common::text::is_unsafe(c) && c != '\n' && c != '\t')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_identity_stays_revoked_whatever_certificate_it_presents() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let c0 = hostile::enroll(&hub.token("rv-1").await).await;
    let mut link = RawLink::connect(&c0).await.unwrap();
    // A burst of renewals signs at most one certificate a second.
    for _ in 0..20 {
        link.send(body(agent_message::Body::Renew(outpost_proto::v1::RenewRequest {
            csr_pem: hostile::key_and_csr().1,
            ca_pins: Vec::new(),
        })))
        .await;
    }
    let mut signed = Vec::new();
    for _ in 0..20 {
        let r = link
            .until(|m| match m {
                hub_message::Body::Renewed(r) => Some(r.clone()),
                _ => None,
            })
            .await
            .unwrap();
        if r.error.is_empty() {
            signed.push(r.cert_chain_pem);
        } else {
            assert!(r.error.contains("at most one a second"), "{}", r.error);
        }
    }
    assert_eq!(signed.len(), 1, "a burst of 20 renewals minted {} certificates", signed.len());
    // The rate is the condition under test here, not a synchronisation.
    let pause = || tokio::time::sleep(Duration::from_millis(1100));
    pause().await;
    // C1 (lost with its key, as if the answer never arrived) is replaced by C2: C1 and C2 are valid, C0 not.
    let (c2_pem, c2_key) = link.renew().await.unwrap();
    let c2 = c0.with_cert(&c2_pem, &c2_key);
    drop(link);
    let s = RawLink::connect(&c0).await.err().expect("C0 was replaced twice");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("superseded"), "{}", s.message());
    // Using C2 ends C1; a long-lived stream keeps renewing after its own certificate was replaced.
    let mut l2 = RawLink::connect(&c2).await.unwrap();
    let (c3_pem, c3_key) = l2.renew().await.unwrap();
    pause().await;
    let (c4_pem, c4_key) = l2.renew().await.expect("a live stream renews again");
    let (c3, c4) = (c0.with_cert(&c3_pem, &c3_key), c0.with_cert(&c4_pem, &c4_key));

    // The repro: renew on the stream, revoke, come back with any certificate the identity ever held.
    hub.client(Role::Admin).revoke_server(RevokeServerRequest { name: "rv-1".into() }).await.unwrap();
    let closed = l2.until(|_| None::<()>).await.unwrap_err();
    assert_eq!(closed.code(), Code::PermissionDenied, "the live stream is closed: {closed:?}");
    for (what, id) in [("C0", &c0), ("C2", &c2), ("C3", &c3), ("C4", &c4)] {
        let s = RawLink::connect(id).await.err().unwrap_or_else(|| panic!("{what} still connects after revocation"));
        assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
    }
    let s = RawLink::connect(&c4).await.err().unwrap();
    assert!(s.message().contains("was revoked"), "{}", s.message());
    // Only a new enrollment brings the server back.
    let fresh = hostile::enroll(&hub.token("rv-1").await).await;
    RawLink::connect(&fresh).await.unwrap();
}

/// Enrollments racing for one token: exactly one gets an identity; every other one is told the token was
/// used, and by whom. Single use is the store's guarantee, not a lock in the hub's handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollments_racing_for_one_token_enroll_exactly_one_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let token = hub.token("race-1").await;
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let token = token.clone();
            tokio::spawn(async move { hostile::enroll_with(&token, HostFacts::default()).await })
        })
        .collect();
    let mut won = Vec::new();
    let mut lost = Vec::new();
    for r in racers {
        match r.await.unwrap() {
            Ok(id) => won.push(id.agent_id),
            Err(s) => lost.push(s),
        }
    }
    assert_eq!(won.len(), 1, "{} agents enrolled with one token", won.len());
    assert_eq!(lost.len(), 7);
    for s in &lost {
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("already used") && s.message().contains(&won[0]), "{}", s.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_join_token_cannot_take_over_a_server() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let mut admin = hub.client(Role::Admin);
    let t1 = admin.create_join_token(token_req("web-1", false)).await.unwrap().into_inner().token;
    let t2 = admin.create_join_token(token_req("web-1", false)).await.unwrap().into_inner().token;
    let a2 = hostile::enroll(&t2).await;
    let mut running = RawLink::connect(&a2).await.unwrap();
    let s = hostile::enroll_with(&t1, HostFacts::default()).await.expect_err("the older token is dead");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    // The running agent was not touched.
    running.send(report(1, Health::default())).await;
    running.until(|m| matches!(m, hub_message::Body::Ack(_)).then_some(())).await.unwrap();

    let s = admin.create_join_token(token_req("web-1", false)).await.expect_err("needs --replace");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("--replace"), "{}", s.message());
    let t3 = admin.create_join_token(token_req("web-1", true)).await.unwrap().into_inner().token;
    let a3 = hostile::enroll(&t3).await;
    assert_ne!(a3.agent_id, a2.agent_id);
    running.until(|_| None::<()>).await.expect_err("the replaced agent's stream is closed");
    assert!(RawLink::connect(&a2).await.is_err(), "the replaced identity is refused");
    let audit = hub
        .client(Role::Support)
        .query_audit(QueryAuditRequest { server: "web-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .records;
    let takeover = audit.iter().find(|r| r.action == "takeover").expect("the takeover is audited");
    assert!(takeover.message.contains(&a2.agent_id) && takeover.message.contains(&a3.agent_id), "{takeover:?}");
    let tokens = audit.iter().filter(|r| r.action == "create-join-token").count();
    assert_eq!(tokens, 3, "{audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_report_never_blocks_the_ones_behind_it_and_reports_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let id = hostile::enroll(&hub.token("rp-1").await).await;
    let huge = Hello { last_seq: u64::MAX, dropped_reports: u64::MAX, ..Default::default() };
    let s = RawLink::open(&id, body(agent_message::Body::Hello(huge))).await.err().expect("refused");
    assert!(s.message().contains("below 2^48"), "{}", s.message());
    let mut link = RawLink::connect(&id).await.unwrap();
    let long_mount = Health {
        disks: vec![Disk { mount: "é".repeat(200), total_bytes: 1, available_bytes: 1 }],
        ..Default::default()
    };
    let cases: Vec<(Health, i64, &str)> = vec![
        (long_mount, 0, "400 bytes"),
        (Health { cpu_percent: f32::NAN, ..Default::default() }, 0, "cpu_percent"),
        (Health { k3s: Some(K3s { state: 2, detail: "é".repeat(200) }), ..Default::default() }, 0, "k3s.detail"),
        (
            Health {
                disks: vec![Disk { mount: "/".into(), total_bytes: 1, available_bytes: 9 }],
                ..Default::default()
            },
            0,
            "available",
        ),
        (Health { agent_version: NASTY.into(), ..Default::default() }, 0, "control"),
        (Health::default(), -1, "taken_at_ms"),
        (Health::default(), 1 << 62, "taken_at_ms"),
    ];
    let n = cases.len() as u64;
    for (i, (h, taken, _)) in cases.iter().enumerate() {
        let mut m = report(i as u64 + 1, h.clone());
        if *taken != 0
            && let Some(agent_message::Body::Report(r)) = &mut m.body
        {
            r.taken_at_ms = *taken;
        }
        link.send(m).await;
    }
    link.send(report(n + 1, Health::default())).await;
    for (i, (_, _, why)) in cases.iter().enumerate() {
        let r = link
            .until(|m| match m {
                hub_message::Body::Refused(r) => Some(r.clone()),
                _ => None,
            })
            .await
            .expect("refused, and the stream stays up");
        assert_eq!(r.seq, i as u64 + 1);
        assert!(r.reason.contains(why), "report {}: {}", r.seq, r.reason);
    }
    let acked = link
        .until(|m| match m {
            hub_message::Body::Ack(a) => Some(a.up_to_seq),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(acked, n + 1, "the good report behind the bad ones is stored");
    // A duplicate seq with other content keeps the first and is logged.
    link.send(report(n + 1, Health { cpu_percent: 50.0, ..Default::default() })).await;
    link.until(|m| matches!(m, hub_message::Body::Ack(_)).then_some(())).await.unwrap();
    let log = tmp.path().join("hub/hubd.log");
    harness::wait_for_file(&log, "different content").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_enforces_the_output_window_and_cap_it_announces() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let id = hostile::enroll(&hub.token("fl-1").await).await;
    let mut link = RawLink::connect(&id).await.unwrap();
    let mut ops = hub.client(Role::Support);
    let job =
        tokio::spawn(async move { harness::run_job(&mut ops, harness::action("diagnostics", &["fl-1"], &[])).await });
    let cmd = link.next_command().await.unwrap();
    // Ignore the 256 KiB window: push 60 MB of "diagnostics" without waiting for credit.
    let chunk = "x".repeat(200 * 1024);
    let mut sent = 0usize;
    let closed = loop {
        link.send(update(CommandUpdate { command_id: cmd.clone(), output: chunk.clone(), ..Default::default() })).await;
        sent += chunk.len();
        if sent > 60_000_000 {
            break None;
        }
        match tokio::time::timeout(Duration::from_millis(1), link.rx.message()).await {
            Ok(Err(s)) => break Some(s),
            Ok(Ok(None)) => break Some(tonic::Status::cancelled("ended")),
            _ => {}
        }
    };
    let closed = match closed {
        Some(s) => s,
        None => link.until(|_| None::<()>).await.unwrap_err(),
    };
    assert_eq!(closed.code(), Code::ResourceExhausted, "an agent ignoring its window is cut off: {closed:?}");
    assert!(closed.message().contains("beyond its"), "{}", closed.message());
    // It comes back and answers: what it said past the window is dropped and counted.
    let mut again = RawLink::connect(&id).await.unwrap();
    let cmd2 = again.next_command().await.unwrap();
    assert_eq!(cmd2, cmd, "redelivered");
    // Now it keeps to its window (waiting for credit) but ignores the action's 4 MiB output cap: the hub
    // passes on no more than the cap, drops the rest, and grants no credit for it, so the agent stalls.
    let piece = "y".repeat(16 * 1024);
    let cost = piece.len() as u64 + outpost_proto::OUTPUT_UPDATE_COST;
    let mut window = 256 * 1024u64;
    let mut honoured = 0u64;
    while honoured < 6 << 20 {
        while window >= cost {
            again
                .send(update(CommandUpdate { command_id: cmd.clone(), output: piece.clone(), ..Default::default() }))
                .await;
            window -= cost;
            honoured += piece.len() as u64;
        }
        // No credit within 3 s: the hub has stopped granting (the wait is the scenario, not synchronisation).
        match tokio::time::timeout(
            Duration::from_secs(3),
            again.until(|m| match m {
                hub_message::Body::Credit(c) => Some(c.bytes),
                _ => None,
            }),
        )
        .await
        {
            Ok(Ok(bytes)) => window += bytes,
            _ => break,
        }
    }
    let result = CommandResult { outcome: Outcome::Succeeded as i32, ..Default::default() };
    again.send(update(CommandUpdate { command_id: cmd.clone(), result: Some(result), ..Default::default() })).await;
    let run = job.await.unwrap();
    let r = run.result("fl-1");
    let got = run.output.get("fl-1").map_or(0, String::len) as u64;
    assert!(
        got <= outpost_common::actions::DEFAULT_OUTPUT_CAP,
        "the caller got {got} bytes of the {} sent; the action's cap is {}",
        sent as u64 + honoured,
        outpost_common::actions::DEFAULT_OUTPUT_CAP
    );
    assert!(honoured < 6 << 20, "the hub kept granting credit past the cap ({honoured} bytes)");
    // Everything the hub received is either passed on or counted as dropped (what was still in flight when
    // the first stream was cut never arrived, so only the second stream's output is summed exactly).
    assert!(
        r.output_dropped_bytes + got >= honoured && r.output_dropped_bytes > honoured.saturating_sub(got),
        "the hub counted what it dropped: {} dropped, {got} passed on, {honoured} sent on the second stream",
        r.output_dropped_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_bad_enrollments_are_rate_limited_and_summarised_and_leaving_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "[agents]\nenroll_rate_per_source = 50\nenroll_burst_per_source = 100").await;
    let token = outpost_common::JoinToken::parse(&hub.token("x-1").await).unwrap();
    let bogus = outpost_common::JoinToken { secret: "0".repeat(64), ..token }.encode();
    let mut refused = 0;
    let mut limited = 0;
    for _ in 0..400 {
        match hostile::enroll_with(&bogus, HostFacts::default()).await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("retry in"), "{}", s.message());
                limited += 1;
            }
            Err(_) => refused += 1,
            Ok(_) => panic!("a bogus token enrolled"),
        }
    }
    assert!(limited > 0 && refused >= 100, "limited {limited}, refused {refused}");
    let log = std::fs::read_to_string(tmp.path().join("hub/hubd.log")).unwrap();
    let lines = log.lines().filter(|l| l.contains("enrollment refused")).count();
    assert!(lines <= 3, "{refused} refusals wrote {lines} log lines");
    // Many agents leaving at once: each is counted at debug, none is a "bad message" warning. The flood
    // emptied this address's bucket: enroll as an agent does, after the hinted wait.
    let token = hub.token("x-2").await;
    let id = loop {
        match hostile::enroll_with(&token, HostFacts::default()).await {
            Ok(id) => break id,
            Err(s) if s.code() == Code::ResourceExhausted => {
                let ms: u64 =
                    s.message().rsplit("retry in ").next().and_then(|t| t.split(' ').next()?.parse().ok()).unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            Err(s) => panic!("{s}"),
        }
    };
    for _ in 0..20 {
        let link = RawLink::connect(&id).await.unwrap();
        link.send(report(1, Health::default())).await;
        drop(link);
    }
    let log = std::fs::read_to_string(tmp.path().join("hub/hubd.log")).unwrap();
    assert!(!log.contains("bad message"), "an agent leaving was logged as a bad message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_certificates_have_a_ceiling_a_list_and_a_revocation_that_closes_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "[operators]\ncert_max_ttl_secs = 86400").await;
    let hubd = |args: &[&str]| {
        let out = std::process::Command::new(harness::bin("hubd"))
            .arg("--config")
            .arg(tmp.path().join("hub/hubd.toml"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let issue = |name: &str, role: &str, out: &Path, ttl: &str| {
        hubd(&["operator", "issue", "--name", name, "--role", role, "--out", out.to_str().unwrap(), "--ttl", ttl])
    };
    let bundle_dir = tmp.path().join("alice");
    let (code, _, err) = issue("alice", "support", &bundle_dir, "36500d");
    assert_eq!(code, Some(1));
    assert!(err.contains("over the ceiling of 1d"), "{err}");
    // A long-lived certificate minted with the CA directly is refused by the hub.
    let long = hub.bundle_with_ttl("old-timer", Role::Admin, Duration::from_secs(100 * 86400));
    let s = outpost_proto::v1::operator_client::OperatorClient::new(long.channel().unwrap())
        .who_am_i(outpost_proto::v1::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert!(s.message().contains("over this hub's ceiling"), "{s:?}");

    let (code, out, err) = issue("alice", "support", &bundle_dir, "1h");
    assert_eq!(code, Some(0), "{out}{err}");
    let alice = outpost_common::bundle::Bundle::load(&bundle_dir).unwrap();
    let mut client = outpost_proto::v1::operator_client::OperatorClient::new(alice.channel().unwrap());
    let mut watch = client.watch_fleet(WatchFleetRequest {}).await.unwrap().into_inner();
    watch.message().await.unwrap();
    let (_, out, _) = hubd(&["operator", "list"]);
    assert!(out.lines().any(|l| l.starts_with("alice") && l.contains("support")), "{out}");
    let (code, out, err) = hubd(&["operator", "revoke", "alice"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 live session(s) closed"), "{out}");
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(s) => break Some(s),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end.map(|s| s.code()), Some(Code::PermissionDenied));
    let s = client.who_am_i(outpost_proto::v1::WhoAmIRequest {}).await.unwrap_err();
    assert!(s.message().contains("were revoked"), "{s:?}");
    // A bundle issued after the revocation works.
    let again = tmp.path().join("alice-2");
    let (code, _, err) = issue("alice", "support", &again, "1h");
    assert_eq!(code, Some(0), "{err}");
    let alice2 = outpost_common::bundle::Bundle::load(&again).unwrap();
    outpost_proto::v1::operator_client::OperatorClient::new(alice2.channel().unwrap())
        .who_am_i(outpost_proto::v1::WhoAmIRequest {})
        .await
        .expect("a bundle issued after the revocation is accepted");
    let (_, out, _) = hubd(&["operator", "list"]);
    assert!(out.lines().any(|l| l.starts_with("alice") && l.contains("UTC") && !l.ends_with('-')), "{out}");
    // An admin cannot revoke themselves.
    let s =
        hub.client(Role::Admin).revoke_operator(RevokeOperatorRequest { name: "test-admin".into() }).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    // An expired bundle says when it expired before anything is dialled.
    let short = tmp.path().join("bob");
    let (code, _, err) = issue("bob", "viewer", &short, "1s");
    assert_eq!(code, Some(0), "{err}");
    tokio::time::sleep(Duration::from_millis(2100)).await; // outliving a 1 s certificate is the scenario
    let out = std::process::Command::new(harness::bin("outpost"))
        .arg("--bundle")
        .arg(&short)
        .arg("servers")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired at") && err.contains("hubd operator issue --name bob"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smaller_validation_gaps_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let mut admin = hub.client(Role::Admin);
    // A 900 KB server name is not echoed back.
    let s = admin.create_join_token(token_req(&"a".repeat(900_000), false)).await.unwrap_err();
    assert!(s.message().len() < 1000, "{} bytes of error", s.message().len());
    // 22 CJK characters are 64 characters or fewer.
    let mut req = token_req("cjk-1", false);
    req.customer = "顧客".repeat(11);
    admin.create_join_token(req).await.expect("22 characters are allowed");
    // RSA keys get the key-type message, whatever their size.
    let token = hub.token("rsa-1").await;
    for bits in [512usize, 1024] {
        let csr = rsa_csr(bits);
        let t = outpost_common::JoinToken::parse(&token).unwrap();
        let addr = outpost_common::tls::HubAddr::parse(&t.hub).unwrap();
        let ca = outpost_common::tls::fetch_pinned_ca(&addr, &t.pin).await.unwrap();
        let s = outpost_proto::v1::enrollment_client::EnrollmentClient::new(addr.channel(&ca, None).unwrap())
            .enroll(outpost_proto::v1::EnrollRequest { join_token: t.secret.clone(), csr_pem: csr, host: None })
            .await
            .unwrap_err();
        assert!(s.message().contains("P-256"), "RSA-{bits}: {}", s.message());
    }
    // Who may cancel a job: the operator who started it, or an admin; every refusal is audited.
    let id = hostile::enroll(&hub.token("cx-1").await).await;
    let mut link = RawLink::connect(&id).await.unwrap();
    let mut admin2 = hub.client(Role::Admin);
    let req = outpost_proto::v1::RunActionRequest {
        args: [("argv".to_string(), "[\"sleep\",\"30\"]".to_string())].into(),
        confirm: "cx-1".into(),
        ..harness::action("exec", &["cx-1"], &[])
    };
    let mut stream = admin2.run_action(req).await.unwrap().into_inner();
    let plan = loop {
        if let Some(outpost_proto::v1::JobEvent { event: Some(outpost_proto::v1::job_event::Event::Plan(p)) }) =
            stream.message().await.unwrap()
        {
            break p;
        }
    };
    link.until(|m| matches!(m, hub_message::Body::Command(_)).then_some(())).await.unwrap();
    let s = hub
        .client(Role::Support)
        .cancel_job(outpost_proto::v1::CancelJobRequest { job_id: plan.job_id.clone() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    hub.client(Role::Admin).cancel_job(outpost_proto::v1::CancelJobRequest { job_id: plan.job_id }).await.unwrap();
}

fn rsa_csr(bits: usize) -> String {
    let out = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", &format!("rsa:{bits}"), "-nodes", "-keyout", "/dev/null", "-subj", "/"])
        .output()
        .expect("openssl");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubd_creates_nothing_when_its_port_is_taken() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = tmp.path().join("hubd.toml");
    let data = tmp.path().join("data");
    std::fs::write(&config, format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n", data.display())).unwrap();
    let out = std::process::Command::new(harness::bin("hubd")).arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"), "{out:?}");
    assert!(!data.exists(), "hubd created {} although it could not bind", data.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_supplied_text_is_inert_on_every_operator_surface() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    // Every text field the contract lets an agent send, with every class of dangerous character.
    let nasty_host = HostFacts {
        hostname: NASTY.into(),
        os: NASTY.into(),
        kernel: NASTY.into(),
        arch: NASTY.into(),
        agent_version: NASTY.into(),
    };
    let token = hub.token("hx-1").await;
    let s = hostile::enroll_with(&token, nasty_host).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "host facts with control characters are refused: {s:?}");
    let id = hostile::enroll_with(&token, HostFacts { hostname: "hx".into(), ..Default::default() }).await.unwrap();
    let s = RawLink::open(
        &id,
        body(agent_message::Body::Hello(Hello { agent_version: NASTY.into(), ..Default::default() })),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(s.code(), Code::InvalidArgument);
    let mut link = RawLink::connect(&id).await.unwrap();
    let h = Health {
        agent_version: NASTY.into(),
        disks: vec![Disk { mount: NASTY.into(), total_bytes: 1, available_bytes: 1 }],
        k3s: Some(K3s { state: 2, detail: NASTY.into() }),
        ..Default::default()
    };
    link.send(report(1, h)).await;
    link.until(|m| matches!(m, hub_message::Body::Refused(_)).then_some(())).await.unwrap();
    link.send(update(CommandUpdate { command_id: NASTY.into(), output: NASTY.into(), ..Default::default() })).await;
    link.send(report(2, Health::default())).await;
    link.until(|m| matches!(m, hub_message::Body::Ack(_)).then_some(())).await.unwrap();

    // Output and a result message are free text: an operator runs diagnostics from the CLI.
    let bundle = tmp.path().join("bundle");
    hub.bundle("ops", Role::Admin).write(&bundle).unwrap();
    let outpost = move |args: &[&str]| {
        let out = std::process::Command::new(harness::bin("outpost"))
            .arg("--bundle")
            .arg(&bundle)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let run = {
        let outpost = outpost.clone();
        tokio::task::spawn_blocking(move || outpost(&["run", "diagnostics", "--on", "hx-1"]))
    };
    let cmd = link.next_command().await.unwrap();
    let result = CommandResult { outcome: Outcome::Failed as i32, message: NASTY.into(), ..Default::default() };
    link.send(update(CommandUpdate {
        command_id: cmd,
        output: format!("{NASTY}\n{NASTY}\n"),
        result: Some(result),
        started: true,
    }))
    .await;
    let run_out = run.await.unwrap();
    assert!(run_out.contains("\\u{1b}[2J"), "the output arrived, escaped: {run_out}");
    let audit_out = outpost(&["audit", "--server", "hx-1"]);
    assert!(audit_out.contains("\\u{202e}"), "the result message is in the audit log, escaped: {audit_out}");
    let servers_out = outpost(&["servers"]);
    let server_out = outpost(&["server", "hx-1", "--history", "5"]);
    for (surface, text) in
        [("run", &run_out), ("audit", &audit_out), ("servers", &servers_out), ("server", &server_out)]
    {
        assert_eq!(has_unsafe(text), None, "{surface} printed a raw dangerous character: {text:?}");
    }
    // JSON stays faithful: every dangerous character is a JSON escape, and parses back to what was said.
    let json = outpost(&["audit", "--server", "hx-1", "--output", "json"]);
    assert_eq!(has_unsafe(&json), None, "{json}");
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(parsed.to_string().contains('\u{202e}'), "the JSON decodes to the raw text");

    // The TUI: the console's own state and view, fed from this hub, rendered into a buffer.
    let mut ops = hub.client(Role::Admin);
    let mut app = outpost_console::state::App::new(&hub.url, "ops", "admin");
    let mut watch = ops.watch_fleet(WatchFleetRequest {}).await.unwrap().into_inner();
    app.apply(watch.message().await.unwrap().unwrap(), outpost_common::now_ms());
    let records = ops
        .query_audit(QueryAuditRequest { server: "hx-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(records.iter().any(|r| r.message.contains('\u{1b}')), "the audit log keeps what was said, raw");
    app.apply_audit(records);
    let job_event = outpost_proto::v1::JobEvent {
        event: Some(outpost_proto::v1::job_event::Event::Target(outpost_proto::v1::TargetEvent {
            server: "hx-1".into(),
            output: format!("{NASTY}\n"),
            result: Some(CommandResult { message: NASTY.into(), ..Default::default() }),
            ..Default::default()
        })),
    };
    app.job = Some(Default::default());
    app.apply_job(job_event);
    let screens = outpost_console::view::render_all_for_test(&mut app, 200, 50);
    for (name, text) in &screens {
        assert_eq!(has_unsafe(text), None, "the {name} screen shows a raw dangerous character");
    }
    // The hub's log.
    let log = std::fs::read_to_string(tmp.path().join("hub/hubd.log")).unwrap();
    assert_eq!(has_unsafe(&log), None, "the hub log holds a raw dangerous character");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_revocation_a_new_token_in_the_token_file_brings_the_running_agent_back() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let agent = harness::AgentProc::start(tmp.path(), "rc-1", &hub.token("rc-1").await, "");
    let mut ops = hub.client(Role::Viewer);
    let first =
        harness::watch_until(&mut ops, "connected", |f| harness::is(f, "rc-1", outpost_proto::v1::Liveness::Connected))
            .await;
    let old_agent = first["rc-1"].agent_id.clone();
    hub.client(Role::Admin).revoke_server(RevokeServerRequest { name: "rc-1".into() }).await.unwrap();
    harness::wait_for_file(&agent.dir.join("agentd.log"), "hub refused this agent's identity").await;
    std::fs::write(agent.dir.join("join-token"), hub.token("rc-1").await).unwrap();
    harness::watch_until(&mut ops, "back with a new identity", |f| {
        f.get("rc-1")
            .is_some_and(|s| s.agent_id != old_agent && harness::liveness(s) == outpost_proto::v1::Liveness::Connected)
    })
    .await;
    assert!(!agent.dir.join("join-token").exists(), "the spent token was removed");

    // `agentd enroll --token-file` removes the spent token too.
    let dir = tmp.path().join("manual");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("join-token"), hub.token("rc-2").await).unwrap();
    std::fs::write(dir.join("agentd.toml"), format!("data_dir = \"{}/data\"\n", dir.display())).unwrap();
    let out = std::process::Command::new(harness::bin("agentd"))
        .arg("--config")
        .arg(dir.join("agentd.toml"))
        .args(["enroll", "--token-file"])
        .arg(dir.join("join-token"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!dir.join("join-token").exists(), "the spent token stayed on disk");
    let out = std::process::Command::new(harness::bin("agentd"))
        .arg("--config")
        .arg(dir.join("agentd.toml"))
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server:   rc-2") && text.contains(" UTC (in "), "{text}");
}
