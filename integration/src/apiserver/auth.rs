//! Authentication as kube-apiserver does it: a client certificate signed by
//! the CA (see `tls.rs`), else a bearer token from the token table (in
//! memory, and a `--token-auth-file` CSV re-read when it changes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Who made a request, as an authenticator reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct UserInfo {
    /// The user name (`system:admin`, `system:serviceaccount:NS:NAME`).
    pub name: String,
    /// The uid (empty for client certificates).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The groups (`system:authenticated` is added by the server).
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user in `groups`, without uid.
    pub fn new(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.to_string(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// The identity of a service account's token.
    pub fn service_account(namespace: &str, name: &str) -> UserInfo {
        UserInfo {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: String::new(),
            groups: vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{namespace}"),
            ],
        }
    }

    /// With `system:authenticated`, as every authenticated request gets.
    fn authenticated(mut self) -> UserInfo {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_string());
        }
        self
    }
}

/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `token,user,uid[,"group1,group2"]`.
    #[error("token file line {line}: {message}")]
    Line {
        /// 1-based.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// Parses kube-apiserver's `--token-auth-file` format: CSV records
/// `token,user,uid[,"group1,group2"]` (leading spaces trimmed, extra columns
/// ignored).
pub fn parse_token_csv(text: &str) -> Result<BTreeMap<String, UserInfo>, TokenFileError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut tokens = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| TokenFileError::Line {
            line: e.position().map(|p| p.line()).unwrap_or(0),
            message: e.to_string(),
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let field = |i: usize| record.get(i).map(str::trim_start).unwrap_or("");
        if record.len() == 1 && field(0).is_empty() {
            continue;
        }
        if record.len() < 3 {
            return Err(TokenFileError::Line {
                line,
                message: format!(
                    "token file must have at least 3 columns (token, user name, user uid), found {}",
                    record.len()
                ),
            });
        }
        if field(0).is_empty() {
            return Err(TokenFileError::Line {
                line,
                message: "token file: empty token".to_string(),
            });
        }
        let groups = if record.len() >= 4 && !field(3).is_empty() {
            field(3).split(',').map(|g| g.trim().to_string()).collect()
        } else {
            Vec::new()
        };
        tokens.insert(
            field(0).to_string(),
            UserInfo {
                name: field(1).to_string(),
                uid: field(2).to_string(),
                groups,
            },
        );
    }
    Ok(tokens)
}

/// A token file and what was last read from it.
struct TokenFile {
    path: PathBuf,
    state: Mutex<TokenFileState>,
}

struct TokenFileState {
    /// Modification time and length when last read.
    stamp: Option<(SystemTime, u64)>,
    tokens: BTreeMap<String, UserInfo>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl TokenFile {
    fn open(path: &Path) -> Result<TokenFile, TokenFileError> {
        let stamp = stamp(path);
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            state: Mutex::new(TokenFileState {
                stamp,
                tokens: parse_token_csv(&text)?,
            }),
        })
    }

    /// The user of `token`, re-reading the file first when its modification
    /// time or length changed. A file that does not parse (say, caught half
    /// written) keeps the previous table until it changes again.
    fn lookup(&self, token: &str) -> Option<UserInfo> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.path);
        if now != state.stamp {
            match std::fs::read_to_string(&self.path)
                .map_err(|source| TokenFileError::Read {
                    path: self.path.clone(),
                    source,
                })
                .and_then(|text| parse_token_csv(&text))
            {
                Ok(tokens) => {
                    state.tokens = tokens;
                    state.stamp = now;
                }
                Err(error) => eprintln!("test-apiserver: keeping the previous tokens: {error}"),
            }
        }
        state.tokens.get(token).cloned()
    }
}

/// The authenticators of a server with authentication on.
pub struct Authenticator {
    tokens: Mutex<BTreeMap<String, UserInfo>>,
    token_file: Option<TokenFile>,
}

impl Authenticator {
    pub fn new(token_file: Option<&Path>) -> Result<Authenticator, TokenFileError> {
        Ok(Authenticator {
            tokens: Mutex::new(BTreeMap::new()),
            token_file: token_file.map(TokenFile::open).transpose()?,
        })
    }

    pub fn add_token(&self, token: &str, user: UserInfo) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), user);
    }

    pub fn remove_token(&self, token: &str) -> bool {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token)
            .is_some()
    }

    /// The request's user: the verified client certificate's, else the
    /// bearer token's (in-memory table first, then the file); None is 401.
    pub fn authenticate(
        &self,
        certificate_user: Option<&UserInfo>,
        authorization: Option<&str>,
    ) -> Option<UserInfo> {
        if let Some(user) = certificate_user {
            return Some(user.clone().authenticated());
        }
        let token = authorization?.trim().strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        let known = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned();
        known
            .or_else(|| self.token_file.as_ref()?.lookup(token))
            .map(UserInfo::authenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_parse_as_kube_apiserver_reads_them() {
        let text = "abc,alice,1001,\"devs,ops\"\n\nxyz,bob,1002\n  tok3,carol,1003,single\n";
        let tokens = parse_token_csv(text).unwrap();
        assert_eq!(
            tokens["abc"],
            UserInfo {
                name: "alice".into(),
                uid: "1001".into(),
                groups: vec!["devs".into(), "ops".into()]
            }
        );
        assert_eq!(tokens["xyz"].groups, Vec::<String>::new());
        assert_eq!(tokens["tok3"].name, "carol");
        assert_eq!(tokens["tok3"].groups, vec!["single".to_string()]);
        assert_eq!(tokens.len(), 3);

        let error = parse_token_csv("good,u,1\nshort,u\n").unwrap_err();
        assert!(
            matches!(error, TokenFileError::Line { line: 2, .. }),
            "{error}"
        );
    }

    #[test]
    fn certificates_win_over_tokens_and_unknown_tokens_fail() {
        let auth = Authenticator::new(None).unwrap();
        auth.add_token("t1", UserInfo::new("bob", &["devs"]));
        let bob = auth.authenticate(None, Some("Bearer t1")).unwrap();
        assert_eq!(bob.groups, vec!["devs", AUTHENTICATED]);
        let cert = UserInfo::new("alice", &[]);
        assert_eq!(
            auth.authenticate(Some(&cert), Some("Bearer t1"))
                .unwrap()
                .name,
            "alice"
        );
        assert_eq!(auth.authenticate(None, Some("Bearer nope")), None);
        assert_eq!(auth.authenticate(None, None), None);
        assert!(auth.remove_token("t1"));
        assert_eq!(auth.authenticate(None, Some("Bearer t1")), None);
    }
}
