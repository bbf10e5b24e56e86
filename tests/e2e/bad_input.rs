//! Done-when 4: every bad input gets a precise error, and nothing is half-written.

use std::time::Duration;

use agentd::identity::{AgentIdentity, EnrollError, enroll, new_key_and_csr};
use harness::{AgentProc, HubProc, is, watch_until};
use outpost_common::tls::{HubAddr, TlsError};
use outpost_common::{JoinToken, Role};
use outpost_proto::v1::agent_link_client::AgentLinkClient;
use outpost_proto::v1::enrollment_client::EnrollmentClient;
use outpost_proto::v1::{
    AgentMessage, CreateJoinTokenRequest, EnrollRequest, Health, Hello, Liveness, Report, RevokeServerRequest,
    WhoAmIRequest, agent_message,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use tonic::Code;

async fn hub(tmp: &tempfile::TempDir, extra: &str) -> HubProc {
    harness::init();
    HubProc::start(&tmp.path().join("hub"), harness::free_port(), extra).await
}

fn refused(r: Result<AgentIdentity, EnrollError>) -> String {
    match r {
        Err(EnrollError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reused_expired_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let token = hub.token("t-1").await;
    enroll(&token, None).await.expect("first use works");
    let m = refused(enroll(&token, None).await);
    assert!(m.starts_with("join token was already used at") && m.contains("hubd token create --server t-1"), "{m}");

    let mut admin = hub.client(Role::Admin);
    let req = CreateJoinTokenRequest { server_name: "t-2".into(), ttl_secs: 1, ..Default::default() };
    let short = admin.create_join_token(req).await.unwrap().into_inner();
    // Waiting out a TTL is the condition under test, not synchronisation.
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(1100)).await;
    assert!(outpost_common::now_ms() > short.expires_at_ms);
    let m = refused(enroll(&short.token, None).await);
    assert!(m.starts_with("join token expired at") && m.contains("--server t-2"), "{m}");

    let mut forged = JoinToken::parse(&token).unwrap();
    forged.secret = "ab".repeat(32);
    let m = refused(enroll(&forged.encode(), None).await);
    assert!(m.starts_with("join token not recognised"), "{m}");

    assert!(matches!(enroll("hello", None).await, Err(EnrollError::Token(outpost_common::TokenError::Prefix))));
}

/// The hub refused at the TLS layer: no RPC ran, so there is no gRPC answer, only a transport error
/// (which one the client sees depends on TLS 1.3 timing: an alert, a reset, a broken pipe, an h2 error).
fn assert_transport_refusal(s: &tonic::Status) {
    use std::error::Error;
    assert!(matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled), "{s:?}");
    let mut source = s.source();
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() {
            return;
        }
        source = e.source();
    }
    panic!("expected a transport-level refusal, got an RPC answer: {s:?}");
}

fn csr(key: &KeyPair, params: CertificateParams) -> String {
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn empty() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_csrs_are_refused_and_do_not_burn_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let token = hub.token("csr-1").await;
    let secret = JoinToken::parse(&token).unwrap().secret;
    let ca = hub.bundle("x", Role::Viewer).ca_pem;
    let mut client = EnrollmentClient::new(HubAddr::parse(&hub.url).unwrap().channel(&ca, None).unwrap());
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let p256 = KeyPair::generate().unwrap();
    let named = CertificateParams::default(); // has a CN
    let mut sans = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    sans.distinguished_name = DistinguishedName::new();
    let cases = [
        (csr(&ed, empty()), "invalid CSR: the CSR key is Ed25519; agents must use ECDSA P-256 keys"),
        (csr(&p256, named), "leave the subject empty: the hub assigns names"),
        (csr(&p256, sans), "the CSR requests extensions (names or usages); send none"),
        ("garbage".to_string(), "invalid CSR: csr_pem is not a PEM-encoded PKCS#10 certificate request"),
        ("x".repeat(20_000), "invalid CSR: csr_pem is 20000 bytes; the limit is 16384"),
    ];
    for (csr_pem, want) in cases {
        let err = client.enroll(EnrollRequest { join_token: secret.clone(), csr_pem, host: None }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(want), "want {want:?}, got {:?}", err.message());
    }
    // Nothing was burned: the same token still enrolls.
    enroll(&token, None).await.expect("token survives bad CSRs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_plaintext_and_foreign_ca_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let token = hub.token("pin-1").await;

    let mut wrong = JoinToken::parse(&token).unwrap();
    wrong.pin = format!("sha256:{}", "0".repeat(64));
    match enroll(&wrong.encode(), None).await {
        Err(EnrollError::Tls(TlsError::PinMismatch { presented, .. })) => {
            assert_eq!(presented, hub.pin)
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    let msg = enroll(&wrong.encode(), None).await.unwrap_err().to_string();
    assert!(msg.contains("did not present a CA matching the pin"), "{msg}");

    // Our clients refuse to speak plaintext at all…
    assert!(matches!(HubAddr::parse(&hub.url.replace("https", "http")), Err(TlsError::NotHttps(_))));
    // …and the hub refuses a plaintext gRPC client.
    let plain =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", hub.port)).unwrap().connect_lazy();
    let err =
        outpost_proto::v1::operator_client::OperatorClient::new(plain).who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_transport_refusal(&err);

    // A client certificate from another CA fails the handshake.
    let foreign_dir = tmp.path().join("foreign");
    let foreign = hub::pki::ca::FleetCa::load_or_create(&foreign_dir, None).unwrap();
    let (issued, key) = foreign.issue_operator("mallory", Role::Admin, Duration::from_secs(600)).unwrap();
    let ca = hub.bundle("x", Role::Viewer).ca_pem;
    let ch = HubAddr::parse(&hub.url).unwrap().channel(&ca, Some((&issued.chain_pem, &key))).unwrap();
    let err = outpost_proto::v1::operator_client::OperatorClient::new(ch).who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_transport_refusal(&err);

    // The hub is still fine.
    let me = hub.client(Role::Viewer).who_am_i(WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(me.role, "viewer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let req = || CreateJoinTokenRequest { server_name: "r-1".into(), ttl_secs: 60, ..Default::default() };
    let err = hub.client(Role::Viewer).create_join_token(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "operator test-viewer has role viewer; creating join tokens needs role admin or higher");
    let err = hub.client(Role::Support).revoke_server(RevokeServerRequest { name: "r-1".into() }).await.unwrap_err();
    assert_eq!(
        err.message(),
        "operator test-support has role support; revoking certificates needs role admin or higher"
    );
    // An agent certificate cannot use the operator API.
    let id = enroll(&hub.token("r-2").await, None).await.unwrap();
    let ch = HubAddr::parse(&id.hub).unwrap().channel(&id.ca_pem, Some((&id.cert_pem, &id.key_pem))).unwrap();
    let err = outpost_proto::v1::operator_client::OperatorClient::new(ch).who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("the operator API needs an operator certificate"), "{}", err.message());
    // No certificate at all.
    let ch = HubAddr::parse(&hub.url).unwrap().channel(&id.ca_pem, None).unwrap();
    let err = outpost_proto::v1::operator_client::OperatorClient::new(ch).who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("needs a client certificate"), "{}", err.message());
}

fn agent_link(id: &AgentIdentity) -> AgentLinkClient<tonic::transport::Channel> {
    AgentLinkClient::new(
        HubAddr::parse(&id.hub).unwrap().channel(&id.ca_pem, Some((&id.cert_pem, &id.key_pem))).unwrap(),
    )
}

fn body(b: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(b) }
}

/// Opens a stream with `msgs` and returns the first error the hub answers with.
async fn stream_error(id: &AgentIdentity, msgs: Vec<AgentMessage>) -> tonic::Status {
    let mut inbound = match agent_link(id).connect(tokio_stream::iter(msgs)).await {
        Err(s) => return s,
        Ok(r) => r.into_inner(),
    };
    loop {
        match inbound.message().await {
            Err(s) => return s,
            Ok(None) => panic!("stream ended without an error"),
            Ok(Some(_)) => {}
        }
    }
}

/// Opens a stream with `msgs` and returns the reason of the first ReportRefused.
async fn refusal(id: &AgentIdentity, msgs: Vec<AgentMessage>) -> String {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    let mut inbound =
        agent_link(id).connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    loop {
        match inbound.message().await.unwrap().and_then(|m| m.body) {
            Some(outpost_proto::v1::hub_message::Body::Refused(r)) => return r.reason,
            Some(_) => {}
            None => panic!("the stream ended without a ReportRefused"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ill_formed_and_oversized_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let id = enroll(&hub.token("m-1").await, None).await.unwrap();
    let hello = || body(agent_message::Body::Hello(Hello::default()));
    let report = |seq| {
        body(agent_message::Body::Report(Report {
            seq,
            taken_at_ms: outpost_common::now_ms(),
            body: Some(Health::default().into()),
        }))
    };

    let s = stream_error(&id, vec![report(1)]).await;
    assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "the first message on Connect must be Hello"));
    // An invalid report is refused on its own (ReportRefused); the stream stays up for the reports behind it.
    assert_eq!(refusal(&id, vec![hello(), report(0)]).await, "report.seq must be at least 1 (sequences start at 1)");
    let s = stream_error(&id, vec![hello(), AgentMessage { body: None }]).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("an AgentMessage must carry a body"), "{}", s.message());
    let s = stream_error(&id, vec![hello(), hello()]).await;
    assert_eq!(s.message(), "Hello may be sent only once, as the first message");
    let big = Health { disks: vec![Default::default(); 65], ..Default::default() };
    let big = outpost_common::report::health_report(1, outpost_common::now_ms(), big);
    assert_eq!(
        refusal(&id, vec![hello(), body(agent_message::Body::Report(big))]).await,
        "report 1 lists 65 disks; at most 64"
    );

    // Over the 1 MiB message limit: refused by the codec before any handler runs.
    let ca = id.ca_pem.clone();
    let mut client = EnrollmentClient::new(HubAddr::parse(&hub.url).unwrap().channel(&ca, None).unwrap());
    let err = client
        .enroll(EnrollRequest { join_token: "x".into(), csr_pem: "x".repeat(2 << 20), host: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("decoded message length too large"), "{}", err.message());
    // Nothing was stored: the server is still at seq 0.
    let list =
        hub.client(Role::Viewer).list_servers(outpost_proto::v1::ListServersRequest {}).await.unwrap().into_inner();
    assert_eq!(list.servers.iter().find(|s| s.name == "m-1").unwrap().reports_received, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificate_is_refused_and_its_live_stream_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "").await;
    let _agent = AgentProc::start(tmp.path(), "rev-1", &hub.token("rev-1").await, "");
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "agent connected", |f| is(f, "rev-1", Liveness::Connected)).await;
    let serial = hub
        .client(Role::Admin)
        .revoke_server(RevokeServerRequest { name: "rev-1".into() })
        .await
        .unwrap()
        .into_inner()
        .revoked_serial;
    watch_until(&mut ops, "live stream closed", |f| is(f, "rev-1", Liveness::Disconnected)).await;
    let id = AgentIdentity::load(&tmp.path().join("rev-1/data")).unwrap().unwrap();
    assert_eq!(id.cert().unwrap().serial, serial);
    let s = stream_error(&id, vec![body(agent_message::Body::Hello(Hello::default()))]).await;
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(
        s.message().starts_with(&format!("certificate {serial} (agent {}) was revoked", id.agent_id)),
        "{}",
        s.message()
    );
    assert!(s.message().contains("new join token"), "{}", s.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused_and_the_agent_says_how_to_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub(&tmp, "[agents]\ncert_ttl_secs = 3").await;
    let id = enroll(&hub.token("exp-1").await, None).await.unwrap();
    let not_after = id.cert().unwrap().not_after;
    // Waiting out the certificate's lifetime is the condition under test.
    while outpost_common::now_ms() / 1000 <= not_after {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = stream_error(&id, vec![body(agent_message::Body::Hello(Hello::default()))]).await;
    assert_transport_refusal(&s);

    // agentd with that identity does not try the hub; it logs the recovery path.
    let dir = tmp.path().join("exp-1");
    id.save(&dir.join("data")).unwrap();
    let agent = AgentProc::start(tmp.path(), "exp-1", "", "");
    std::fs::remove_file(dir.join("join-token")).ok();
    let log = dir.join("agentd.log");
    let deadline = tokio::time::Instant::now() + harness::WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("certificate expired while offline") {
            assert!(text.contains("agentd enroll --token TOKEN"), "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no expiry message in {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
}

#[tokio::test]
async fn bad_config_files_name_the_field_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("hubd", "grace_sec = 3\n", "unknown field `grace_sec`"),
        ("hubd", "[store]\nhistory_len = 0\n", "store.history_len: 0 is outside 1..=100000"),
        ("hubd", "grace_secs = 3\n", "`grace_secs` moved to section [agents]"),
        ("agentd", "report_interval_ms = 5\n", "report_interval_ms: 5 is outside 100..=3600000"),
        ("agentd", "hub = \"http://127.0.0.1:1\"\n", "Outpost never talks plaintext"),
    ];
    for (i, (binary, toml, want)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        // hubd validates before binding anything; agentd's `status` only reads.
        let sub: &[&str] = if *binary == "agentd" { &["status"] } else { &[] };
        let out =
            std::process::Command::new(harness::bin(binary)).arg("--config").arg(&path).args(sub).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{binary} {toml}: {stderr}");
        assert!(stderr.contains(want), "{binary}: want {want:?} in {stderr}");
    }
}

#[test]
fn csr_helper_matches_hub_policy() {
    let (_key, csr) = new_key_and_csr().unwrap();
    hub::pki::ca::FleetCa::check_csr(&csr).expect("the agent's own CSR passes the hub's policy");
}
