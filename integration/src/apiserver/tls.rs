//! HTTPS: the certificate authority the server generates at start, the
//! server and client certificates it issues, and the rustls server
//! configuration.
//!
//! Client certificates are checked as kube-apiserver does it: the TLS
//! handshake asks for one but accepts any (Go's `tls.RequestClientCert`),
//! and the x509 authenticator verifies the chain against the CA afterwards,
//! so a certificate from another CA is a 401 Unauthorized, not a failed
//! handshake.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use super::auth::UserInfo;

/// The key algorithm of generated certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256, as k3s generates them.
    EcdsaP256,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures, as kind's kubeconfigs.
    Rsa2048,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;

    /// `ecdsa` or `rsa` (the binary's `--tls` values).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ecdsa" | "ecdsa-p256" => Ok(KeyAlgorithm::EcdsaP256),
            "rsa" | "rsa-2048" => Ok(KeyAlgorithm::Rsa2048),
            other => Err(format!("unknown key algorithm {other:?} (ecdsa or rsa)")),
        }
    }
}

/// Why certificates or the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused the parameters or could not sign.
    #[error("cannot generate a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The RSA key could not be generated or encoded.
    #[error("cannot generate an RSA key: {0}")]
    RsaKey(String),
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A certificate subject holds at most two Organization values here.
    #[error("a client certificate carries at most two groups (subject O values), {0} given")]
    TooManyGroups(usize),
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// The cluster CA: signs the server certificate and client certificates,
/// and verifies client certificates.
pub struct CertAuthority {
    params: CertificateParams,
    key: KeyPair,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    algorithm: KeyAlgorithm,
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// The object identifier of the X.520 Organization attribute: rcgen keeps one
/// value per attribute type, so a second group is written under a custom
/// type with the same identifier.
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

fn generate_key(algorithm: KeyAlgorithm) -> Result<KeyPair, TlsError> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?),
        KeyAlgorithm::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| TlsError::RsaKey(e.to_string()))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| TlsError::RsaKey(e.to_string()))?;
            Ok(KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(der.as_bytes()),
                &rcgen::PKCS_RSA_SHA256,
            )?)
        }
    }
}

impl CertAuthority {
    /// A new self-signed CA (`CN=kubernetes-ca`).
    pub fn generate(algorithm: KeyAlgorithm) -> Result<CertAuthority, TlsError> {
        let key = generate_key(algorithm)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kubernetes-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(cert_der.clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        Ok(CertAuthority {
            params,
            key,
            cert_pem: cert.pem(),
            cert_der,
            algorithm,
            provider,
            verifier,
        })
    }

    /// The CA certificate, PEM encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        algorithm: KeyAlgorithm,
    ) -> Result<IssuedCert, TlsError> {
        let key = generate_key(algorithm)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }

    /// The serving certificate: the names a client inside or outside the
    /// cluster uses for the API server, and `listen_ip`.
    pub fn issue_server(&self, listen_ip: IpAddr) -> Result<IssuedCert, TlsError> {
        let mut names: Vec<String> = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "127.0.0.1",
            "::1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !listen_ip.is_unspecified() && !listen_ip.is_loopback() {
            names.push(listen_ip.to_string());
        }
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, self.algorithm)
    }

    /// A client certificate for `user` (subject CN) in `groups` (subject O,
    /// at most two), with `algorithm` or the CA's.
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[&str],
        algorithm: Option<KeyAlgorithm>,
    ) -> Result<IssuedCert, TlsError> {
        if groups.len() > 2 {
            return Err(TlsError::TooManyGroups(groups.len()));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for (i, group) in groups.iter().enumerate() {
            let attribute = if i == 0 {
                DnType::OrganizationName
            } else {
                DnType::CustomDnType(ORGANIZATION_OID.to_vec())
            };
            params.distinguished_name.push(attribute, *group);
        }
        params.distinguished_name.push(DnType::CommonName, user);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, algorithm.unwrap_or(self.algorithm))
    }

    /// The rustls configuration serving `server` (HTTP/1.1 only: ALPN
    /// offers `http/1.1` alone so clients do not try h2).
    pub fn server_config(&self, server: &IssuedCert) -> Result<Arc<ServerConfig>, TlsError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der.clone()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(RequestClientCert {
                verifier: self.verifier.clone(),
            }))
            .with_single_cert(vec![server.cert_der.clone()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The user of a client certificate chain (end entity first) if the CA
    /// signed it: CN is the name, every O value a group.
    pub fn authenticate(&self, chain: &[CertificateDer<'_>]) -> Option<UserInfo> {
        let (end_entity, intermediates) = chain.split_first()?;
        self.verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref()).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())?
            .to_string();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .map(str::to_string)
            .collect();
        Some(UserInfo {
            name,
            uid: String::new(),
            groups,
        })
    }
}

/// Asks for a client certificate and accepts any whose handshake signature
/// is valid; the chain is checked by [`CertAuthority::authenticate`].
#[derive(Debug)]
struct RequestClientCert {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.verifier.root_hint_subjects()
    }

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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_name_their_user_and_groups() {
        let ca = CertAuthority::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let cert = ca
            .issue_client("alice", &["system:masters", "devs"], None)
            .unwrap();
        let user = ca
            .authenticate(std::slice::from_ref(&cert.cert_der))
            .unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, vec!["system:masters", "devs"]);
        let other = CertAuthority::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let foreign = other.issue_client("mallory", &[], None).unwrap();
        assert_eq!(ca.authenticate(&[foreign.cert_der]), None);
    }
}
