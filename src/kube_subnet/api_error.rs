//! What an API error means for an operator. kube-rs says "ApiError:
//! Unauthorized"; the operator needs to know which credential was refused
//! and which permission is missing, and that the task keeps the network
//! as it is and retries (a rotated token file is re-read by kube-rs).

use kube::core::Status;
use kube::runtime::watcher;

/// The permission a call needs, in RBAC words ("patch nodes/status").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// list and watch of every Node (the peer watch).
    ListWatchNodes,
    /// list and watch of this node's Node (field selector on its name).
    ListWatchOwnNode,
    /// patch of this node's `nodes/status` (annotations and the condition).
    PatchNodeStatus,
}

impl Permission {
    fn words(self) -> &'static str {
        match self {
            Permission::ListWatchNodes => "list and watch nodes",
            Permission::ListWatchOwnNode => "list and watch its own node",
            Permission::PatchNodeStatus => "patch nodes/status",
        }
    }
}

/// flannel's whole need, as the shipped ClusterRole grants it.
pub const CLUSTER_ROLE_RULES: &str = "nodes get/list/watch and nodes/status patch";

/// The API server's refusal inside `error`, if it is one.
fn status_of(error: &kube::Error) -> Option<&Status> {
    match error {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

fn watcher_status(error: &watcher::Error) -> Option<&Status> {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => status_of(e),
        watcher::Error::WatchError(status) => Some(status),
        _ => None,
    }
}

/// The text for `status` when it is a 401 or 403, naming `credential`
/// and `needed`.
fn refusal(status: &Status, credential: &str, needed: Permission) -> Option<String> {
    match status.code {
        401 => Some(format!(
            "401 Unauthorized: the API server does not accept {credential} (an expired, revoked or rotated token, or a client certificate it does not trust); replace it: a rewritten token file is picked up within a minute, without a restart"
        )),
        403 => {
            let server = if status.message.is_empty() {
                String::new()
            } else {
                format!(" (the API server says: {})", status.message)
            };
            Some(format!(
                "403 Forbidden: {credential} may not {}{server}; flannel needs {CLUSTER_ROLE_RULES}: bind flannel's ClusterRole to this credential's user",
                needed.words()
            ))
        }
        _ => None,
    }
}

/// `error` of a request that needed `needed`, in an operator's words.
pub fn explain(error: &kube::Error, credential: &str, needed: Permission) -> String {
    status_of(error)
        .and_then(|status| refusal(status, credential, needed))
        .unwrap_or_else(|| error.to_string())
}

/// A watcher's `error`, in an operator's words.
pub fn explain_watch(error: &watcher::Error, credential: &str, needed: Permission) -> String {
    watcher_status(error)
        .and_then(|status| refusal(status, credential, needed))
        .unwrap_or_else(|| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> Box<Status> {
        Box::new(Status::failure(message, reason).with_code(code))
    }

    #[test]
    fn refusals_name_the_credential_and_the_permission() {
        let credential = "kubeconfig /etc/k.yaml (user \"flannel\", token)";
        let forbidden = "nodes \"node-a\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope";
        let cases: Vec<(Box<Status>, Permission, Vec<&str>)> = vec![
            (
                status(401, "Unauthorized", "Unauthorized"),
                Permission::ListWatchNodes,
                vec![
                    "401 Unauthorized",
                    credential,
                    "rotated token",
                    "without a restart",
                ],
            ),
            (
                status(403, "Forbidden", forbidden),
                Permission::PatchNodeStatus,
                vec![
                    "403 Forbidden",
                    credential,
                    "may not patch nodes/status",
                    forbidden,
                    CLUSTER_ROLE_RULES,
                ],
            ),
            (
                status(403, "Forbidden", ""),
                Permission::ListWatchNodes,
                vec!["may not list and watch nodes;"],
            ),
        ];
        for (status, needed, wanted) in cases {
            let plain = kube::Error::Api(status.clone());
            let watch = watcher::Error::InitialListFailed(kube::Error::Api(status.clone()));
            let streamed = watcher::Error::WatchError(status);
            for text in [
                explain(&plain, credential, needed),
                explain_watch(&watch, credential, needed),
                explain_watch(&streamed, credential, needed),
            ] {
                for part in &wanted {
                    assert!(text.contains(part), "{text:?} lacks {part:?}");
                }
            }
        }
    }

    #[test]
    fn other_errors_keep_their_own_words() {
        let conflict = kube::Error::Api(status(409, "Conflict", "the object has been modified"));
        assert_eq!(
            explain(&conflict, "c", Permission::PatchNodeStatus),
            conflict.to_string()
        );
        let gone = watcher::Error::WatchError(status(410, "Expired", "too old resource version"));
        assert_eq!(
            explain_watch(&gone, "c", Permission::ListWatchNodes),
            gone.to_string()
        );
    }
}
