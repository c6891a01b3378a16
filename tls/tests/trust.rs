//! The CA, CSR issuance and rustls handshakes over loopback.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use tether_tls::{
    CertificateAuthority, ClientAuth, Credentials, Identity, KeyAndRequest, Role, TlsContext,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn node(cluster: &str, name: &str) -> Identity {
    Identity::new(cluster, Role::Node, name)
}

/// Issues `identity` a certificate the way a joining node gets one: its own key, a CSR.
fn join(ca: &CertificateAuthority, identity: &Identity) -> Credentials {
    let request = KeyAndRequest::new(identity).unwrap();
    let chain_pem = ca
        .sign_request(&request.csr_pem, identity, &[], Duration::from_secs(3600))
        .unwrap();
    Credentials {
        identity: identity.clone(),
        chain_pem,
        key_pem: request.key_pem,
        trust_pem: ca.trust_pem().to_string(),
    }
}

/// Runs one handshake: server `server` (client cert required), client `client`
/// expecting `expected` as the server. Ok(identity the server saw).
async fn handshake(
    server: &Credentials,
    client: &Credentials,
    expected: &Identity,
) -> Result<Identity, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_ctx = TlsContext::new(server).unwrap();
    let config = server_ctx.server_config(ClientAuth::Required);
    let accept = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut tls, identity) = TlsContext::accept(config, stream).await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte)
            .await
            .map_err(|err| err.to_string())?;
        Ok::<_, String>(identity.unwrap())
    });
    let client_ctx = TlsContext::new(client).unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connected = client_ctx.connect(stream, expected).await;
    if let Ok(mut tls) = connected {
        let _ = tls.write_all(b"x").await;
        let _ = tls.flush().await;
    }
    accept.await.unwrap()
}

#[tokio::test]
async fn ca_issues_from_csr_and_handshakes_check_identity_issuer_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&dir.path().join("ca"), "central").unwrap();
    let mode = std::fs::metadata(dir.path().join("ca/ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "CA key must be private");
    // Loading again gives the same CA.
    let again = CertificateAuthority::load_or_create(&dir.path().join("ca"), "central").unwrap();
    assert_eq!(again.trust_pem(), ca.trust_pem());

    let (one, two) = (node("central", "node-1"), node("central", "node-2"));
    let (creds1, creds2) = (join(&ca, &one), join(&ca, &two));
    assert_eq!(
        Identity::from_certificate(&creds1.certificate_chain().unwrap()[0]).unwrap(),
        one
    );
    assert_eq!(handshake(&creds1, &creds2, &one).await.unwrap(), two);

    // The client checks the server is who it meant to reach.
    assert!(handshake(&creds1, &creds2, &two).await.is_err());

    // Another CA's certificate is refused.
    let other = CertificateAuthority::load_or_create(&dir.path().join("other"), "central").unwrap();
    let stranger = join(&other, &node("central", "node-9"));
    // (Same subject as ours, so webpki finds "our" issuer and the signature fails.)
    let refused = handshake(&creds1, &stranger, &one).await.unwrap_err();
    assert!(
        refused.contains("DecryptError") || refused.contains("BadSignature"),
        "{refused}"
    );

    // An expired certificate is refused.
    let now = SystemTime::now();
    let expired = ca
        .issue_credentials_valid(
            &two,
            &[],
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let refused = handshake(&creds1, &expired, &one).await.unwrap_err();
    assert!(refused.to_lowercase().contains("expired"), "{refused}");

    // Renewal: a context takes new credentials for the same identity, not another's.
    let ctx = TlsContext::new(&creds2).unwrap();
    ctx.replace(&join(&ca, &two)).unwrap();
    assert!(ctx.replace(&creds1).is_err());
    let renewed = join(&ca, &two);
    assert!(!renewed.renewal_due(SystemTime::now()).unwrap());
    assert!(renewed
        .renewal_due(SystemTime::now() + Duration::from_secs(2500))
        .unwrap());
}

#[tokio::test]
async fn an_operator_ca_with_an_intermediate_issues_certificates_peers_trust() {
    let dir = tempfile::tempdir().unwrap();
    // The operator's root and intermediate, made with rcgen as an operator's PKI would.
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root_params = rcgen::CertificateParams::new(vec![]).unwrap();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root = rcgen::CertifiedIssuer::self_signed(root_params, root_key).unwrap();
    let inter_key = rcgen::KeyPair::generate().unwrap();
    let mut inter_params = rcgen::CertificateParams::new(vec![]).unwrap();
    inter_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    inter_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let inter = inter_params.signed_by(&inter_key, &root).unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let cert = write("inter.crt", &inter.pem(), 0o644);
    let key = write("inter.key", &inter_key.serialize_pem(), 0o644);
    let chain = write("root.crt", &root.pem(), 0o644);
    let refused = CertificateAuthority::from_files(&cert, &key, Some(&chain))
        .err()
        .unwrap();
    assert!(refused.to_string().contains("0600"), "{refused}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca = CertificateAuthority::from_files(&cert, &key, Some(&chain)).unwrap();
    assert_eq!(
        ca.trust_pem().trim(),
        root.pem().trim(),
        "peers trust the root"
    );

    let (one, two) = (node("central", "node-1"), node("central", "node-2"));
    let (creds1, creds2) = (join(&ca, &one), join(&ca, &two));
    assert_eq!(
        creds1.certificate_chain().unwrap().len(),
        2,
        "leaf + intermediate"
    );
    assert_eq!(handshake(&creds1, &creds2, &one).await.unwrap(), two);
}
