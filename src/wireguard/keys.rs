//! WireGuard keys: 32 bytes, base64 in annotations and the key file, hex on
//! the userspace API. The node's private key lives in a file that is
//! generated once (clamped Curve25519, base64, mode 0400) and read back
//! with whitespace trimmed, as upstream flannel does.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};

/// Go's `base64.StdEncoding` as upstream decodes keys with it: padding
/// required, stray bits in the last digit ignored.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Where upstream flannel keeps the private key (`/run` is a tmpfs: a new
/// key at every boot unless a distribution points this elsewhere).
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";

/// The environment variable upstream reads for another key file.
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";

/// A 32-byte WireGuard key (public or pre-shared). Shown as base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Key(pub [u8; 32]);

/// Why a key text is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64, or not 32 bytes once decoded.
    #[error("'{0}' is not a WireGuard key (44 characters of base64 for 32 bytes)")]
    Base64(String),
    /// Not 64 hex digits.
    #[error("'{0}' is not a WireGuard key in hex (64 hex digits)")]
    Hex(String),
}

impl Key {
    /// Decodes standard base64 (`wg genkey` / annotation form).
    pub fn from_base64(text: &str) -> Result<Key, KeyError> {
        let bytes = LENIENT
            .decode(text)
            .map_err(|_| KeyError::Base64(shorten(text)))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Base64(shorten(text)))?;
        Ok(Key(bytes))
    }

    /// Standard base64, 44 characters.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Decodes 64 lowercase (or uppercase) hex digits (userspace API form).
    pub fn from_hex(text: &str) -> Result<Key, KeyError> {
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return Err(KeyError::Hex(shorten(text)));
        }
        let mut key = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let high = hex_value(pair[0]).ok_or_else(|| KeyError::Hex(shorten(text)))?;
            let low = hex_value(pair[1]).ok_or_else(|| KeyError::Hex(shorten(text)))?;
            key[i] = (high << 4) | low;
        }
        Ok(Key(key))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The all-zero key: "no pre-shared key" on both configuration APIs.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_base64())
    }
}

/// The node's private key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(pub(crate) [u8; 32]);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    /// A fresh key from getrandom(2), clamped as Curve25519 wants (what
    /// `wg genkey` and wgtypes.GeneratePrivateKey do).
    pub fn generate() -> std::io::Result<PrivateKey> {
        let mut bytes = [0u8; 32];
        let mut filled = 0;
        while filled < bytes.len() {
            // SAFETY: the pointer and length describe the unfilled tail of
            // `bytes`, which getrandom only writes into.
            let n = unsafe {
                libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            filled += n as usize;
        }
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Ok(PrivateKey(bytes))
    }

    /// The public key peers know us by (X25519 with the base point).
    pub fn public_key(&self) -> Key {
        Key(x25519_dalek::x25519(
            self.0,
            x25519_dalek::X25519_BASEPOINT_BYTES,
        ))
    }

    /// The raw bytes (for the configuration APIs).
    pub fn as_key(&self) -> Key {
        Key(self.0)
    }
}

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or writing failed.
    #[error("cannot {step} WireGuard private key file {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause (errno).
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("WireGuard private key file {path} does not hold a key: {problem}; fix or delete it (a missing file is generated)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The private key and what was noticed loading it.
#[derive(Debug)]
pub struct LoadedKey {
    /// The key.
    pub key: PrivateKey,
    /// Whether the file was generated now.
    pub generated: bool,
    /// Things worth a warning (a key file others can read).
    pub warnings: Vec<String>,
}

/// The key file to use: `configured`, else `$WIREGUARD_KEY_FILE`, else
/// `/run/flannel/wgkey`.
pub fn key_file_path(configured: Option<&Path>) -> PathBuf {
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    match std::env::var_os(KEY_FILE_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_KEY_FILE),
    }
}

/// A key file's content as `wg genkey` writes it (44 characters of base64,
/// surrounding whitespace ignored). The error never quotes the content: it
/// may be most of a private key.
///
/// ```
/// use flannel_embed::wireguard::keys::parse_key_file;
///
/// let key = parse_key_file(b"YNqHbfBQKaGvzefSSfufvd9ZMaGlwSkTeTVWDb7/ZHA=\n")?;
/// assert_eq!(key.as_key().to_base64(), "YNqHbfBQKaGvzefSSfufvd9ZMaGlwSkTeTVWDb7/ZHA=");
/// assert!(parse_key_file(b"not a key").is_err());
/// # Ok::<(), String>(())
/// ```
pub fn parse_key_file(bytes: &[u8]) -> Result<PrivateKey, String> {
    let text = String::from_utf8_lossy(bytes);
    Key::from_base64(text.trim())
        .map(|key| PrivateKey(key.0))
        .map_err(|_| {
            format!(
                "expected 44 characters of base64 (as `wg genkey` writes), found {} bytes",
                bytes.len()
            )
        })
}

/// Reads the private key from `path`, or generates and writes one (parent
/// directories 0755, the file 0400, 44 characters of base64 without a
/// newline) when the file does not exist. Blocking I/O.
///
/// ```
/// use flannel_embed::wireguard::keys::load_or_generate;
///
/// let dir = std::env::temp_dir().join(format!("wgkey-doc-{}", std::process::id()));
/// let path = dir.join("wgkey");
/// let first = load_or_generate(&path)?;
/// assert!(first.generated);
/// // The public key, as the node publishes it in backend-data.
/// let public = first.key.public_key().to_base64();
/// assert_eq!(public.len(), 44);
/// // The next start reads the same key back.
/// let again = load_or_generate(&path)?;
/// assert!(!again.generated);
/// assert_eq!(again.key.public_key().to_base64(), public);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), flannel_embed::wireguard::keys::KeyFileError>(())
/// ```
pub fn load_or_generate(path: &Path) -> Result<LoadedKey, KeyFileError> {
    let io = |step: &'static str| {
        let path = path.to_path_buf();
        move |source| KeyFileError::Io { step, path, source }
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let key = parse_key_file(&bytes).map_err(|problem| KeyFileError::Invalid {
                path: path.to_path_buf(),
                problem,
            })?;
            let mut warnings = Vec::new();
            let mode = std::fs::metadata(path)
                .map_err(io("inspect"))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                warnings.push(format!(
                    "WireGuard private key file {} has mode {:04o}: other users can read the node's private key; chmod 0400 it",
                    path.display(),
                    mode & 0o7777
                ));
            }
            Ok(LoadedKey {
                key,
                generated: false,
                warnings,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate().map_err(io("generate a key for"))?;
            write_key_file(path, &key).map_err(io("write"))?;
            Ok(LoadedKey {
                key,
                generated: true,
                warnings: Vec::new(),
            })
        }
        Err(e) => Err(io("read")(e)),
    }
}

/// Writes the key to a temporary file with mode 0400 and renames it into
/// place, so a crash never leaves half a key behind.
fn write_key_file(path: &Path, key: &PrivateKey) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "wgkey".into());
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&temporary)?;
        file.write_all(STANDARD.encode(key.0).as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A pair made with wireguard-tools: `wg genkey | tee /dev/stderr | wg pubkey`.
    const PRIVATE: &str = "EEl0GML7McbBo7lbd0ebJHDWB2lGKrP5EI8a8BrWVUE=";
    const PUBLIC: &str = "CUMeJEpNz52or45vc2Ug1T3xIzM6Me1vjYWyBZDwXjg=";

    #[test]
    fn public_key_matches_wg_pubkey() {
        let private = Key::from_base64(PRIVATE).unwrap();
        assert_eq!(PrivateKey(private.0).public_key().to_base64(), PUBLIC);
    }

    #[test]
    fn base64_and_hex_round_trip() {
        let key = Key::from_base64(PUBLIC).unwrap();
        assert_eq!(key.to_base64(), PUBLIC);
        assert_eq!(Key::from_hex(&key.to_hex()).unwrap(), key);
        assert_eq!(Key::from_hex(&key.to_hex().to_uppercase()).unwrap(), key);
        for bad in [
            "",
            "abc",
            "CUMeJEpNz52or45vc2Ug1T3xIzM6Me1vjYWyBZDwXj==",
            "CUMeJEpNz52or45vc2Ug1T3xIzM6Me1vjYWyBZDwXjg",
        ] {
            assert!(Key::from_base64(bad).is_err(), "{bad}");
        }
        assert!(Key::from_hex(&"g".repeat(64)).is_err());
        assert!(Key::from_hex("00").is_err());
    }

    #[test]
    fn generated_keys_are_clamped_and_differ() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        assert_ne!(a, b);
        for key in [a, b] {
            assert_eq!(key.0[0] & 7, 0);
            assert_eq!(key.0[31] & 128, 0);
            assert_eq!(key.0[31] & 64, 64);
        }
    }

    #[test]
    fn missing_file_is_generated_0400_without_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/wgkey");
        let first = load_or_generate(&path).unwrap();
        assert!(first.generated);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 44);
        assert!(!text.ends_with('\n'));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o400);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o755);
        // Read back: the same key, not generated again, no warning.
        let second = load_or_generate(&path).unwrap();
        assert!(!second.generated);
        assert_eq!(second.key, first.key);
        assert!(second.warnings.is_empty());
        assert_eq!(Key::from_base64(&text).unwrap(), first.key.as_key());
    }

    #[test]
    fn trailing_newline_and_spaces_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        std::fs::write(&path, format!("  {PRIVATE}\n\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = load_or_generate(&path).unwrap();
        assert_eq!(loaded.key.public_key().to_base64(), PUBLIC);
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn bad_base64_names_the_file_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        std::fs::write(&path, "not a key\n").unwrap();
        let error = load_or_generate(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("does not hold a key"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
    }

    #[test]
    fn world_readable_key_file_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        std::fs::write(&path, PRIVATE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loaded = load_or_generate(&path).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("0644"), "{:?}", loaded.warnings);
    }

    #[test]
    fn unreadable_directory_is_an_io_error_naming_the_step() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the parent directory should be.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "").unwrap();
        let error = load_or_generate(&blocker.join("wgkey")).unwrap_err();
        assert!(matches!(error, KeyFileError::Io { .. }), "{error}");
    }

    #[test]
    fn key_file_path_prefers_the_setting() {
        assert_eq!(
            key_file_path(Some(Path::new("/var/lib/x/wgkey"))),
            PathBuf::from("/var/lib/x/wgkey")
        );
    }
}
