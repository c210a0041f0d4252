//! The Node handlers behind the routes: get, list, create, update, patch,
//! delete, deletecollection (watch is in `watch.rs`), and the query
//! parameters they share.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use super::node::{self, Subresource};
use super::selector::{FieldSelector, LabelSelector};
use super::server::{
    add_warnings, bytes_response, header, json_response, negotiate, object_response, parse_query,
    Body, Format, Shared,
};
use super::status::ApiError;
use super::store::Stored;
use super::table::{self, IncludeObject};
use super::{managed, patch, watch as watching};

/// The largest request body accepted (the real server's JSON limit).
const MAX_BODY: usize = 3 * 1024 * 1024;

// ---------------------------------------------------------------- parameters

fn dry_run(query: &BTreeMap<String, String>) -> Result<bool, ApiError> {
    match query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid dry run value: \"{other}\": supported values: \"All\""
        ))),
    }
}

/// `fieldValidation`: Strict fails, Warn (the default) warns, Ignore drops.
fn field_validation(
    query: &BTreeMap<String, String>,
    unknown: &[String],
) -> Result<Vec<String>, ApiError> {
    let directive = query
        .get("fieldValidation")
        .map(String::as_str)
        .unwrap_or("Warn");
    match directive {
        "Strict" if !unknown.is_empty() => Err(node::strict_error(unknown)),
        "Strict" | "Ignore" | "" => Ok(Vec::new()),
        "Warn" => Ok(unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect()),
        other => Err(ApiError::bad_request(format!(
            "fieldValidation: Invalid value: \"{other}\": fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\""
        ))),
    }
}

fn include_object(query: &BTreeMap<String, String>) -> Result<IncludeObject, ApiError> {
    IncludeObject::parse(query.get("includeObject").map(String::as_str))
        .ok_or_else(|| ApiError::bad_request("includeObject must be one of None, Metadata, Object"))
}

fn media_type(request: &Request<Incoming>) -> String {
    header(request, CONTENT_TYPE)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large()),
        Err(error) => Err(ApiError::bad_request(format!(
            "error reading the request body: {error}"
        ))),
    }
}

/// A JSON request body (YAML bodies are not accepted: clients send JSON).
async fn read_json(request: Request<Incoming>) -> Result<Value, ApiError> {
    let content_type = media_type(&request);
    if !matches!(content_type.as_str(), "" | "application/json" | "*/*") {
        return Err(ApiError::unsupported_media_type(&["application/json"]));
    }
    let body = read_body(request).await?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "Node in version \"v1\" cannot be handled as a Node: {e}"
        ))
    })
}

/// Label and field selectors from the query.
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn parse(query: &BTreeMap<String, String>) -> Result<Selectors, ApiError> {
        Ok(Selectors {
            labels: LabelSelector::parse(
                query.get("labelSelector").map(String::as_str).unwrap_or(""),
            )?,
            fields: FieldSelector::parse(
                query.get("fieldSelector").map(String::as_str).unwrap_or(""),
            )?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, node: &Node) -> bool {
        self.fields.matches(node) && self.labels.matches(node.metadata.labels.as_ref())
    }
}

/// A resourceVersion query parameter.
pub fn parse_rv(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "resourceVersion: Invalid value: \"{text}\": must be a non-negative integer"
        ))
    })
}

// ---------------------------------------------------------------- handlers

pub fn get_one(
    shared: &Shared,
    request: &Request<Incoming>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let format = negotiate(header(request, http::header::ACCEPT))?;
    let stored = shared
        .store
        .get(name)
        .ok_or_else(|| ApiError::not_found(name))?;
    let query = parse_query(request.uri().query());
    Ok(object_response(
        StatusCode::OK,
        &stored,
        format,
        include_object(&query)?,
    ))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

fn encode_continue(rv: u64, last: &str) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: format!("{last}\u{0}"),
    };
    let json = serde_json::to_vec(&token).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let invalid =
        |detail: String| ApiError::bad_request(format!("continue key is not valid: {detail}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| invalid(e.to_string()))?;
    let token: ContinueToken =
        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if token.v != "meta.k8s.io/v1" {
        return Err(invalid(format!(
            "incorrect encoded start resourceVersion (version {})",
            token.v
        )));
    }
    if token.rv == 0 {
        return Err(invalid(
            "incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into(),
        ));
    }
    let start = token
        .start
        .strip_suffix('\u{0}')
        .unwrap_or(&token.start)
        .to_string();
    if start.is_empty() {
        return Err(invalid(
            "encoded start key empty (version meta.k8s.io/v1)".into(),
        ));
    }
    Ok((token.rv, start))
}

pub fn list(
    shared: &Shared,
    request: &Request<Incoming>,
    query: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let format = negotiate(header(request, http::header::ACCEPT))?;
    let include = include_object(query)?;
    let selectors = Selectors::parse(query)?;
    let limit = match query.get("limit").map(String::as_str) {
        None | Some("") => None,
        Some(text) => {
            let n: i64 = text
                .parse()
                .map_err(|_| ApiError::bad_request(format!("limit: Invalid value: \"{text}\"")))?;
            usize::try_from(n).ok().filter(|n| *n > 0)
        }
    };
    let rv_param = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let rv_match = query
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    let continue_param = query.get("continue").map(String::as_str).unwrap_or("");

    let (at, after) = if !continue_param.is_empty() {
        if !rv_param.is_empty() {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        if !rv_match.is_empty() {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        let (rv, start) = decode_continue(continue_param)?;
        if rv < shared.store.compacted() {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ));
        }
        (Some(rv), Some(start))
    } else {
        let exact = match rv_match {
            "" => !rv_param.is_empty() && rv_param != "0" && limit.is_some(),
            "Exact" => {
                if rv_param.is_empty() || rv_param == "0" {
                    return Err(ApiError::bad_request(format!(
                        "resourceVersionMatch: Forbidden: resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"{rv_param}\""
                    )));
                }
                true
            }
            "NotOlderThan" => {
                if rv_param.is_empty() {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                    ));
                }
                false
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
                )))
            }
        };
        let requested = if rv_param.is_empty() {
            0
        } else {
            parse_rv(rv_param)?
        };
        if exact {
            (Some(requested), None)
        } else {
            // Not older than `requested`: the current state always is.
            (None, None)
        }
    };

    let page = shared
        .store
        .list(at, after.as_deref(), limit, &|node| selectors.matches(node))?;
    let mut metadata = json!({"resourceVersion": page.rv.to_string()});
    if let (Some(last), Some(map)) = (&page.more_after, metadata.as_object_mut()) {
        map.insert("continue".into(), json!(encode_continue(page.rv, last)));
        if selectors.is_empty() {
            map.insert("remainingItemCount".into(), json!(page.remaining));
        }
    }
    let items: Vec<&Stored> = page.items.iter().map(|s| s.as_ref()).collect();
    Ok(match format {
        Format::Table => json_response(
            StatusCode::OK,
            &table::table(&items, metadata, include, true),
        ),
        Format::Metadata => {
            let objects: Vec<Value> = items
                .iter()
                .map(|s| table::partial_metadata(&s.node))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": objects}),
            )
        }
        Format::Json => {
            // The items are already serialized: splice them in.
            let head =
                json!({"kind": "NodeList", "apiVersion": "v1", "metadata": metadata}).to_string();
            let mut body = Vec::with_capacity(
                head.len() + 16 + items.iter().map(|s| s.json.len() + 1).sum::<usize>(),
            );
            body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
            body.extend_from_slice(b",\"items\":[");
            for (i, stored) in items.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&stored.json);
            }
            body.extend_from_slice(b"]}");
            bytes_response(StatusCode::OK, body)
        }
    })
}

pub fn watch(
    shared: &Arc<Shared>,
    request: &Request<Incoming>,
    query: &BTreeMap<String, String>,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let format = negotiate(header(request, http::header::ACCEPT))?;
    let include = include_object(query)?;
    let mut selectors = Selectors::parse(query)?;
    if let Some(name) = name {
        // The legacy /watch/nodes/NAME path is a field selector on the name.
        let escaped = name
            .replace('\\', "\\\\")
            .replace(',', "\\,")
            .replace('=', "\\=");
        let mut text = query.get("fieldSelector").cloned().unwrap_or_default();
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(&format!("metadata.name={escaped}"));
        selectors.fields = FieldSelector::parse(&text)?;
    }
    let params =
        watching::WatchParams::parse(query, selectors, format, include, shared.watch_list)?;
    let mut response = Response::new(watching::stream(shared.clone(), params));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(match format {
            Format::Table => "application/json;as=Table;v=v1;g=meta.k8s.io",
            _ => "application/json",
        }),
    );
    response.headers_mut().insert(
        "cache-control",
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(response)
}

/// Decodes, defaults and stores a new Node (shared with the in-process
/// `create_node`).
pub fn create_node(
    shared: &Shared,
    value: Value,
    dry_run: bool,
    query: &BTreeMap<String, String>,
    manager: Option<&str>,
) -> Result<(Arc<Stored>, Vec<String>), ApiError> {
    let fields = manager.map(|m| (m, managed::touched(&value, false, Subresource::Main)));
    let (node, unknown) = node::decode(value)?;
    let warnings = field_validation(query, &unknown)?;
    let stored = create_typed(shared, node, dry_run, fields)?;
    Ok((stored, warnings))
}

/// The part of a creation after decoding (the in-process API starts here:
/// a typed Node has no unknown fields).
pub fn create_typed(
    shared: &Shared,
    mut node: Node,
    dry_run: bool,
    managed_by: Option<(&str, Value)>,
) -> Result<Arc<Stored>, ApiError> {
    node::prepare_for_create(&mut node);
    if let Some((manager, fields)) = managed_by {
        managed::record(&mut node, manager, Subresource::Main, fields);
    }
    if node
        .metadata
        .resource_version
        .as_deref()
        .is_some_and(|rv| !rv.is_empty())
    {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    node::normalize(&mut node);
    shared.store.create(node, dry_run)
}

pub async fn create(
    shared: &Shared,
    request: Request<Incoming>,
    query: &BTreeMap<String, String>,
    manager: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let dry_run = dry_run(query)?;
    let value = read_json(request).await?;
    let (stored, warnings) = create_node(shared, value, dry_run, query, manager)?;
    let mut response = bytes_response(StatusCode::CREATED, stored.json.clone());
    add_warnings(&mut response, &warnings);
    Ok(response)
}

/// The optimistic-concurrency and UID preconditions carried by an object in
/// an update or a patch result.
fn check_preconditions(name: &str, sent: &Node, current: &Stored) -> Result<(), ApiError> {
    if let Some(rv) = sent
        .metadata
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty())
    {
        if rv != current.rv.to_string() {
            return Err(ApiError::conflict(name));
        }
    }
    if let Some(uid) = sent.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
        let current_uid = current.node.metadata.uid.as_deref().unwrap_or("");
        if uid != current_uid {
            return Err(ApiError::precondition(
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {current_uid}"),
            ));
        }
    }
    Ok(())
}

/// The common tail of update and patch: strategy, defaulting, validation.
fn finish_update(
    mut new: Node,
    current: &Stored,
    subresource: Subresource,
    name: &str,
) -> Result<Node, ApiError> {
    if new.metadata.name.as_deref() != Some(name) {
        return Err(ApiError::invalid(
            name,
            vec![super::status::field_invalid(
                "metadata.name",
                new.metadata.name.as_deref().unwrap_or(""),
                "field is immutable",
            )],
        ));
    }
    node::prepare_for_update(&mut new, &current.node, subresource);
    node::normalize(&mut new);
    if subresource == Subresource::Main {
        node::validate(&new)?;
    }
    node::validate_update(&new, &current.node)?;
    Ok(new)
}

pub async fn update(
    shared: &Shared,
    request: Request<Incoming>,
    query: &BTreeMap<String, String>,
    name: &str,
    subresource: Subresource,
    manager: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let dry_run = dry_run(query)?;
    let value = read_json(request).await?;
    let fields = managed::touched(&value, false, subresource);
    let (sent, unknown) = node::decode(value)?;
    let warnings = field_validation(query, &unknown)?;
    let sent_name = sent.metadata.name.clone().unwrap_or_default();
    if sent_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({sent_name}) does not match the name on the URL ({name})"
        )));
    }
    let stored = shared.store.update(name, dry_run, |current| {
        check_preconditions(name, &sent, current)?;
        let mut new = finish_update(sent.clone(), current, subresource, name)?;
        record_if_changed(&mut new, current, manager, subresource, &fields);
        Ok(new)
    })?;
    let mut response = bytes_response(StatusCode::OK, stored.json.clone());
    add_warnings(&mut response, &warnings);
    Ok(response)
}

pub async fn patch_one(
    shared: &Shared,
    request: Request<Incoming>,
    query: &BTreeMap<String, String>,
    name: &str,
    subresource: Subresource,
    manager: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let dry_run = dry_run(query)?;
    let content_type = media_type(&request);
    if !matches!(
        content_type.as_str(),
        patch::MERGE | patch::JSON | patch::STRATEGIC
    ) {
        return Err(ApiError::unsupported_media_type(&[
            patch::JSON,
            patch::MERGE,
            patch::STRATEGIC,
        ]));
    }
    let body = read_body(request).await?;
    let (stored, warnings) = patch_node(
        shared,
        name,
        subresource,
        &content_type,
        &body,
        &WriteOptions {
            dry_run,
            query,
            manager,
        },
    )?;
    let mut response = bytes_response(StatusCode::OK, stored.json.clone());
    add_warnings(&mut response, &warnings);
    Ok(response)
}

/// Adds `manager`'s managedFields entry to `new` only when the write
/// changes the object: kube-apiserver treats a write that changes nothing
/// as no write at all (same resourceVersion, no event, managedFields and
/// their timestamps untouched), which `kubectl patch` reports as
/// "(no change)".
fn record_if_changed(
    new: &mut Node,
    current: &Stored,
    manager: Option<&str>,
    subresource: Subresource,
    fields: &Value,
) {
    let Some(manager) = manager else {
        return;
    };
    let mut unversioned = new.clone();
    unversioned.metadata.resource_version = current.node.metadata.resource_version.clone();
    if unversioned == current.node {
        return;
    }
    managed::record(new, manager, subresource, fields.clone());
}

/// How a write is made: dry run, the query (fieldValidation), and the
/// manager its managedFields entry names (None: no entry, as for the
/// in-process API).
#[derive(Clone, Copy)]
pub struct WriteOptions<'a> {
    pub dry_run: bool,
    pub query: &'a BTreeMap<String, String>,
    pub manager: Option<&'a str>,
}

/// Applies a patch the way `PATCH /api/v1/nodes/NAME[/status]` does:
/// to the stored JSON, then decoding, preconditions (a resourceVersion or
/// uid in the patch), the endpoint's strategy, defaulting and validation.
/// Shared with the in-process `patch_node`.
pub fn patch_node(
    shared: &Shared,
    name: &str,
    subresource: Subresource,
    content_type: &str,
    body: &[u8],
    options: &WriteOptions<'_>,
) -> Result<(Arc<Stored>, Vec<String>), ApiError> {
    let WriteOptions {
        dry_run,
        query,
        manager,
    } = *options;
    let mut warnings = Vec::new();
    let fields = match manager {
        Some(_) => serde_json::from_slice::<Value>(body)
            .map(|document| managed::touched(&document, content_type == patch::JSON, subresource))
            .unwrap_or_else(|_| json!({})),
        None => json!({}),
    };
    let stored = shared.store.update(name, dry_run, |current| {
        let mut document: Value = serde_json::from_slice(&current.json)
            .map_err(|e| ApiError::internal(format!("stored object: {e}")))?;
        patch::apply(content_type, &mut document, body)?;
        let (patched, unknown) = node::decode(document)?;
        warnings = field_validation(query, &unknown)?;
        check_preconditions(name, &patched, current)?;
        let mut new = finish_update(patched, current, subresource, name)?;
        record_if_changed(&mut new, current, manager, subresource, &fields);
        Ok(new)
    })?;
    Ok((stored, warnings))
}

/// `DeleteOptions` fields that matter here.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeleteOptions {
    #[serde(default)]
    preconditions: Option<Preconditions>,
    #[serde(default)]
    dry_run: Option<Vec<String>>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

pub async fn delete(
    shared: &Shared,
    request: Request<Incoming>,
    query: &BTreeMap<String, String>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let mut dry = dry_run(query)?;
    let body = read_body(request).await?;
    let options: DeleteOptions = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    match options.dry_run.as_deref() {
        None | Some([]) => {}
        Some([all]) if all == "All" => dry = true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other:?}: supported values: \"All\""
            )))
        }
    }
    let preconditions = options.preconditions.unwrap_or_default();
    let gone = shared.store.delete(name, dry, |current| {
        let meta = &current.node.metadata;
        if let Some(uid) = preconditions.uid.as_deref() {
            let actual = meta.uid.as_deref().unwrap_or("");
            if uid != actual {
                return Err(ApiError::precondition(
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
                ));
            }
        }
        if let Some(rv) = preconditions.resource_version.as_deref() {
            if rv != current.rv.to_string() {
                return Err(ApiError::precondition(
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in meta: {}",
                        current.rv
                    ),
                ));
            }
        }
        Ok(())
    })?;
    // Nodes have no graceful deletion and the registry does not return the
    // deleted object: the answer is a success Status naming it.
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "kind": "nodes", "uid": gone.node.metadata.uid},
        }),
    ))
}

pub fn delete_collection(
    shared: &Shared,
    query: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let dry = dry_run(query)?;
    let selectors = Selectors::parse(query)?;
    let page = shared
        .store
        .list(None, None, None, &|node| selectors.matches(node))?;
    let mut deleted = Vec::new();
    for stored in page.items {
        // Deleted by someone else meanwhile: not an error for a collection.
        if let Ok(gone) = shared.store.delete(stored.name(), dry, |_| Ok(())) {
            deleted.push(gone);
        }
    }
    let mut body = br#"{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":["#.to_vec();
    for (i, stored) in deleted.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&stored.json);
    }
    body.extend_from_slice(b"]}");
    Ok(bytes_response(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue(42, "node-7");
        assert_eq!(decode_continue(&token).unwrap(), (42, "node-7".to_string()));
        assert_eq!(decode_continue("not a token!").unwrap_err().code, 400);
    }
}
