//! The client against real TLS: certificates made by openssl (setup installs it), a rustls
//! server in the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate it signed for `sans`, in `dir`: ca.pem, server.pem,
/// server-key.pem; and a second, unrelated CA (other-ca.pem).
fn pki(dir: &Path, sans: &str) {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &format!("{ca}-key.pem"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=node",
            "-keyout",
            "server-key.pem",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext"), format!("subjectAltName={sans}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "ext",
        ],
    );
}

/// A TLS server answering every connection with `answer`; sends back what each request
/// held.
async fn tls_server(dir: &Path, answer: &'static str) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server-key.pem")).unwrap();
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A refused handshake is the client's doing: nothing to answer.
                let Ok(mut s) = acceptor.accept(s).await else { return };
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
                s.write_all(answer.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    (addr, rx)
}

fn credentials(dir: &Path, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("credentials");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[tokio::test]
async fn https_with_the_cluster_ca_and_basic_credentials() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), "IP:127.0.0.1");
    let (addr, mut seen) = tls_server(dir.path(), "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}").await;
    let creds = credentials(dir.path(), "esfleet:pa:ss word\n", 0o600);
    let t = Transport::new(Some(&dir.path().join("ca.pem")), Some(&creds), Owner::CurrentUser).unwrap();
    assert_eq!(t.scheme(), "https");
    assert!(!format!("{t:?}").contains("Basic"), "Debug never shows credentials");
    let (status, body) = t.send(&addr, Method::Get, "/_cluster/health", None).await.unwrap();
    assert_eq!((status, body.as_slice()), (200, b"{\"ok\":true}".as_slice()));
    let request = seen.recv().await.unwrap();
    // base64("esfleet:pa:ss word"): the password may hold colons and spaces.
    assert!(
        request.contains("\r\nAuthorization: Basic ZXNmbGVldDpwYTpzcyB3b3Jk\r\n"),
        "{request}"
    );

    // Another CA: the handshake fails and says why.
    let other = Transport::new(Some(&dir.path().join("other-ca.pem")), None, Owner::CurrentUser).unwrap();
    let e = other.send(&addr, Method::Get, "/", None).await.unwrap_err();
    assert!(
        matches!(&e, Failure::Unreachable(w) if w.starts_with("TLS handshake failed") && w.contains("UnknownIssuer")),
        "{e}"
    );
    // The right CA, but the certificate does not name the address dialled.
    let port = addr.rsplit_once(':').unwrap().1;
    let e = t
        .send(&format!("localhost:{port}"), Method::Get, "/", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not valid for name \"localhost\""), "{e}");
    // Plain http to a TLS port is not an answer.
    let e = Transport::plain()
        .send(&addr, Method::Get, "/", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Failure::Bad(_) | Failure::Unreachable(_)), "{e}");
}

#[test]
fn credentials_files_must_be_private_and_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), "IP:127.0.0.1");
    let ca = dir.path().join("ca.pem");
    let p = credentials(dir.path(), "u:p\n", 0o644);
    let e = read_credentials(&p, Owner::CurrentUser).unwrap_err();
    assert!(
        e.ends_with("can be read or written by others (mode 0644); chmod 600 it"),
        "{e}"
    );
    let p = credentials(dir.path(), "no colon here\n", 0o600);
    assert!(read_credentials(&p, Owner::CurrentUser)
        .unwrap_err()
        .ends_with("does not start with a user:password line"));
    let p = credentials(dir.path(), ":p\n", 0o400);
    assert!(read_credentials(&p, Owner::CurrentUser).is_err(), "an empty user");
    let p = credentials(dir.path(), "u:p\r\nsecond line\n", 0o400);
    assert_eq!(
        read_credentials(&p, Owner::CurrentUser).unwrap(),
        ("u".into(), "p".into())
    );
    // A link is not followed: whoever can write the link's directory could point it anywhere.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&p, &link).unwrap();
    assert!(read_credentials(&link, Owner::CurrentUser)
        .unwrap_err()
        .contains("is not a regular file"));
    let missing = read_credentials(&dir.path().join("nope"), Owner::CurrentUser).unwrap_err();
    assert!(
        missing.starts_with("credentials file ") && missing.contains("nope"),
        "{missing}"
    );
    // The agent (root) wants root's file; the CLI its caller's.
    let mine = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap();
    let as_root = read_credentials(&p, Owner::Root);
    assert_eq!(as_root.is_ok(), mine == 0, "{as_root:?}");
    // Credentials without TLS would travel in clear text.
    let e = Transport::new(None, Some(&p), Owner::CurrentUser).unwrap_err();
    assert!(e.contains("sent only over https"), "{e}");
    // A CA file that holds no certificate.
    let e = Transport::new(Some(&p), None, Owner::CurrentUser).unwrap_err();
    assert!(e.contains("holds no PEM certificate"), "{e}");
    assert!(Transport::new(Some(&ca), Some(&p), Owner::CurrentUser).is_ok());
}

#[test]
fn urls_split_into_scheme_endpoint_and_path() {
    assert_eq!(
        split_url("https://127.0.0.1:9200/_cluster/health?timeout=1s").unwrap(),
        (true, "127.0.0.1:9200".into(), "/_cluster/health?timeout=1s".into())
    );
    assert_eq!(split_url("http://h").unwrap(), (false, "h:80".into(), "/".into()));
    assert_eq!(split_url("https://h/x").unwrap(), (true, "h:443".into(), "/x".into()));
    assert_eq!(
        split_url("http://[::1]:9/").unwrap(),
        (false, "[::1]:9".into(), "/".into())
    );
    assert!(split_url("https://u:p@h/").unwrap_err().contains("credentials file"));
    assert!(split_url("ftp://h/").is_err());
    assert_eq!(server_name("[::1]:9200").unwrap(), ServerName::try_from("::1").unwrap());
}
