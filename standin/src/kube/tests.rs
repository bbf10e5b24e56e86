use super::*;

#[test]
fn paths_and_percent_decoding() {
    let t = Target::parse("/apis/apps/v1/namespaces/acme/deployments/web/status").unwrap();
    assert_eq!(
        (t.prefix.as_str(), t.plural.as_str(), t.namespace.as_deref(), t.name.as_deref(), t.sub.as_deref()),
        ("apis/apps/v1", "deployments", Some("acme"), Some("web"), Some("status"))
    );
    let t = Target::parse("/api/v1/nodes").unwrap();
    assert_eq!((t.plural.as_str(), t.namespace, t.name), ("nodes", None, None));
    assert_eq!(percent_decode("app.kubernetes.io%2Fname%3Dweb"), "app.kubernetes.io/name=web");
}
