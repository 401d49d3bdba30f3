//! Server identity: a key pair, a self-signed certificate, and the ID that
//! peers pin: the BLAKE3 of the certificate's SubjectPublicKeyInfo, in hex.
//! Both sides of every connection check the other's ID against the config.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Length of an ID in hex characters.
pub const ID_HEX_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate in it; create one with `hafill keygen --out DIR`")]
    NoCert(PathBuf),
    #[error("{0}: no PEM private key in it; create one with `hafill keygen --out DIR`")]
    NoKey(PathBuf),
    #[error("certificate does not parse: {0}")]
    BadCert(String),
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("{0} already exists; refusing to overwrite a server's identity (remove it first if you mean to)")]
    Exists(PathBuf),
}

/// A loaded identity.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub id: String,
}

/// The ID of a certificate: hex BLAKE3 of its SubjectPublicKeyInfo.
pub fn id_of_cert(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| IdentityError::BadCert(format!("{e:?}")))?;
    let spki = ee.subject_public_key_info();
    Ok(blake3::hash(spki.as_ref()).to_hex().to_string())
}

/// Whether `s` looks like an ID.
pub fn valid_id(s: &str) -> bool {
    s.len() == ID_HEX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Writes `key.pem` and `cert.pem` into `dir` and returns the ID.
pub fn generate(dir: &Path, name: &str) -> Result<String, IdentityError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let key_path = dir.join("key.pem");
    let cert_path = dir.join("cert.pem");
    for p in [&key_path, &cert_path] {
        if p.exists() {
            return Err(IdentityError::Exists(p.clone()));
        }
    }
    let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Generate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec!["hafill".to_string()])
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("hafill {name}"));
    // Peers pin the key, not the validity period: make it long.
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(4000, 1, 1);
    let cert = params
        .self_signed(&key)
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
    fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    id_of_cert(cert.der())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Loads a certificate and key written by [`generate`].
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, IdentityError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|source| IdentityError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let cert = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| IdentityError::NoCert(cert_path.to_path_buf()))?;
    let key_pem = read(key_path)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| IdentityError::NoKey(key_path.to_path_buf()))?;
    let id = id_of_cert(&cert)?;
    Ok(Identity { cert, key, id })
}

/// ring's provider with AES-128-GCM first, the suite two hafill of this
/// version agree on (the server takes the client's order). AES-256
/// (ring's first choice) takes 14 rounds to AES-128's 10, and the cipher
/// is a tenth of each side's CPU on a bulk transfer. AES-256 and ChaCha20
/// stay offered, in that order.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn signature_checks(provider: &CryptoProvider) -> &rustls::crypto::WebPkiSupportedAlgorithms {
    &provider.signature_verification_algorithms
}

/// Client side: accepts the server only if its ID is the one configured.
#[derive(Debug)]
pub struct PinnedServer {
    pub peer: String,
    pub expected_id: String,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = id_of_cert(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if id == self.expected_id {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "peer {} presented ID {id}, but the config pins {}",
                self.peer, self.expected_id
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, signature_checks(&self.provider))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, signature_checks(&self.provider))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_checks(&self.provider).supported_schemes()
    }
}

/// Server side: requires a client certificate whose ID is a configured peer.
#[derive(Debug)]
pub struct PinnedClients {
    /// ID to peer name.
    pub allowed: HashMap<String, String>,
    pub provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = id_of_cert(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if self.allowed.contains_key(&id) {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(%id, "refused a connection: its ID is not a configured peer");
            Err(rustls::Error::General(format!(
                "ID {id} is not a configured peer"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, signature_checks(&self.provider))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, signature_checks(&self.provider))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_checks(&self.provider).supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aes_128_gcm_is_offered_first() {
        let suites: Vec<_> = super::provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            suites,
            [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
    }
}
