//! TLS between hosts: TLS 1.3 only, both sides present their identity's
//! certificate, and trust comes from fingerprints, not from a certificate
//! authority. The server takes any client certificate whose handshake
//! signature checks out and reports its fingerprint (the access layer decides
//! what it may do); the client either pins the fingerprint it expects, so a
//! different certificate fails the handshake before a byte of WebSocket is
//! sent, or (first contact) records what it saw so that both people can
//! compare the [`verification_code`].

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::identity::{Fingerprint, Identity};

/// Label of the TLS exporter the verification code is derived from
/// (RFC 8446 §7.5): both ends of one TLS session get the same secret, and a
/// relay in the middle would have two sessions with different secrets.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-ensemble-verification-code";

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS setup: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the host at {addr} presented a different certificate than the one paired with \
         (expected {expected}); it may be another machine at that address or someone in \
         between. Nothing was sent. If its owner really reinstalled Ensemble, forget the \
         pairing and join again, comparing the code."
    )]
    FingerprintMismatch { addr: SocketAddr, expected: String },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {0} timed out")]
    Timeout(SocketAddr),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The configuration a LAN listener serves with.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AnyClientCert {
        signatures: Signatures(provider.signature_verification_algorithms),
    });
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain(), identity.private_key())?;
    Ok(Arc::new(config))
}

/// The configuration to reach a peer: `pin` is the fingerprint it must
/// present (`None` on first contact).
pub fn client_config(
    identity: &Identity,
    pin: Option<Fingerprint>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        pin,
        signatures: Signatures(provider.signature_verification_algorithms),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.cert_chain(), identity.private_key())?;
    Ok(Arc::new(config))
}

/// A TLS session's peer as this side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The fingerprint of the certificate the peer presented.
    pub fingerprint: Fingerprint,
    /// The code both people compare (see [`verification_code`]).
    pub code: String,
}

/// Completes the server side of a handshake on an accepted connection.
pub async fn accept(
    config: Arc<ServerConfig>,
    identity: &Identity,
    tcp: TcpStream,
) -> std::io::Result<(ServerStream, PeerTls)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
    let (_, conn) = stream.get_ref();
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Fingerprint::of(c.as_ref()))
        .ok_or_else(|| std::io::Error::other("the client presented no certificate"))?;
    let secret = conn
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(std::io::Error::other)?;
    let code = verification_code(identity.fingerprint(), peer, &secret);
    Ok((
        stream,
        PeerTls {
            fingerprint: peer,
            code,
        },
    ))
}

/// Connects to a peer host at `addr`, pinning `pin` when given.
pub async fn connect(
    identity: &Identity,
    addr: SocketAddr,
    pin: Option<Fingerprint>,
) -> Result<(ClientStream, PeerTls), TlsError> {
    let config = client_config(identity, pin)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TlsError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|source| match (pin, is_pin_failure(&source)) {
                (Some(expected), true) => TlsError::FingerprintMismatch {
                    addr,
                    expected: expected.short(),
                },
                _ => TlsError::Handshake { addr, source },
            })
    };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .map_err(|_| TlsError::Timeout(addr))??;
    let (_, conn) = stream.get_ref();
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Fingerprint::of(c.as_ref()))
        .ok_or_else(|| TlsError::Handshake {
            addr,
            source: std::io::Error::other("the host presented no certificate"),
        })?;
    let secret = conn
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(TlsError::Config)?;
    let code = verification_code(identity.fingerprint(), peer, &secret);
    Ok((
        stream,
        PeerTls {
            fingerprint: peer,
            code,
        },
    ))
}

fn is_pin_failure(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)))
}

/// Six digits both people compare: a hash of both certificates' fingerprints
/// (in a fixed order, so both sides compute the same) and a secret exported
/// from this TLS session. Someone in the middle, or a host answering with
/// another certificate, ends up with a different code on at least one side.
pub fn verification_code(ours: Fingerprint, theirs: Fingerprint, secret: &[u8]) -> String {
    let (a, b) = if ours <= theirs {
        (ours, theirs)
    } else {
        (theirs, ours)
    };
    let mut h = Sha256::new();
    h.update(b"ensemble verification code v1");
    h.update(a.0);
    h.update(b.0);
    h.update(secret);
    let digest = h.finalize();
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 1_000_000;
    format!("{:03} {:03}", n / 1000, n % 1000)
}

/// The handshake signature checks both verifiers share: trust comes from
/// fingerprints, but the peer must still prove it holds the certificate's
/// key.
#[derive(Debug)]
struct Signatures(WebPkiSupportedAlgorithms);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[derive(Debug)]
struct AnyClientCert {
    signatures: Signatures,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// Any certificate: who it is, and what it may do, is decided by its
    /// fingerprint afterwards.
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

#[derive(Debug)]
struct PinnedServer {
    pin: Option<Fingerprint>,
    signatures: Signatures,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if Fingerprint::of(end_entity.as_ref()) != pin => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair(
        server_id: Identity,
        client_id: Identity,
        pin: Option<Fingerprint>,
    ) -> (Result<PeerTls, TlsError>, Option<PeerTls>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = server_config(&server_id).unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match accept(config, &server_id, tcp).await {
                Ok((mut s, peer)) => {
                    let mut buf = [0u8; 5];
                    s.read_exact(&mut buf).await.ok()?;
                    assert_eq!(&buf, b"hello");
                    Some(peer)
                }
                Err(_) => None,
            }
        });
        let client = match connect(&client_id, addr, pin).await {
            Ok((mut s, peer)) => {
                s.write_all(b"hello").await.unwrap();
                s.flush().await.unwrap();
                Ok(peer)
            }
            Err(e) => Err(e),
        };
        (client, server.await.unwrap())
    }

    fn identity() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap();
        (dir, id)
    }

    #[tokio::test]
    async fn both_sides_see_each_other_and_the_same_code() {
        let ((_a, server), (_b, client)) = (identity(), identity());
        let (sfp, cfp) = (server.fingerprint(), client.fingerprint());
        let (c, s) = pair(server, client, Some(sfp)).await;
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.fingerprint, sfp);
        assert_eq!(s.fingerprint, cfp);
        assert_eq!(c.code, s.code);
        assert_eq!(c.code.len(), 7);
    }

    #[tokio::test]
    async fn a_different_certificate_fails_the_handshake() {
        let ((_a, server), (_b, client), (_c, other)) = (identity(), identity(), identity());
        let (c, s) = pair(server, client, Some(other.fingerprint())).await;
        assert!(
            matches!(c, Err(TlsError::FingerprintMismatch { .. })),
            "{c:?}"
        );
        assert!(s.is_none(), "the server read application data");
    }

    #[test]
    fn codes_depend_on_both_certificates_and_the_session() {
        let (x, y, z) = (
            Fingerprint::of(b"x"),
            Fingerprint::of(b"y"),
            Fingerprint::of(b"z"),
        );
        assert_eq!(verification_code(x, y, b"s"), verification_code(y, x, b"s"));
        assert_ne!(verification_code(x, y, b"s"), verification_code(x, z, b"s"));
        assert_ne!(verification_code(x, y, b"s"), verification_code(x, y, b"t"));
    }
}
