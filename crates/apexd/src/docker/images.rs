//! Image routes of the Docker API. Image names hold slashes and colons
//! (`127.0.0.1:5000/team/app:1.0`), so the named routes take the whole tail and split
//! off the action (`/json`, `/history`, `/tag`, `/push`, `/get`).

use std::collections::HashMap;
use std::sync::Arc;

use apex_oci::auth::Credentials;
use apex_oci::platform::Platform;
use apex_oci::store::{Progress, PullOptions};
use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::convert::{self, Filters};
use super::{DockerError, DockerResult, DockerState};
use crate::error::ErrorKind;

fn no_such_image(name: &str) -> impl Fn(crate::error::Error) -> DockerError + '_ {
    move |e| match e.kind() {
        ErrorKind::NotFound => DockerError::not_found(format!("No such image: {name}")),
        _ => e.into(),
    }
}

/// Credentials of an `X-Registry-Auth` header (base64url JSON), if any.
fn registry_auth(h: &HeaderMap) -> Option<Credentials> {
    let raw = h.get("X-Registry-Auth")?.to_str().ok()?.trim();
    if raw.is_empty() {
        return None;
    }
    let engines = [
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    let bytes = engines.iter().find_map(|e| e.decode(raw).ok())?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let user = v["username"].as_str().unwrap_or_default();
    let pass = v["password"].as_str().unwrap_or_default();
    (!user.is_empty()).then(|| Credentials {
        username: user.to_string(),
        password: pass.to_string(),
    })
}

/// A JSON message line of a progress stream.
fn line(v: Value) -> Bytes {
    let mut b = serde_json::to_vec(&v).expect("serializable");
    b.push(b'\n');
    Bytes::from(b)
}

fn short(d: &impl std::fmt::Display) -> String {
    let s = d.to_string();
    let hex = s.strip_prefix("sha256:").unwrap_or(&s);
    hex[..hex.len().min(12)].to_string()
}

fn progress_bar(done: u64, total: u64) -> String {
    let width = 50;
    let filled = if total == 0 {
        0
    } else {
        ((done as f64 / total as f64) * width as f64) as usize
    };
    let bar = if filled >= width {
        "=".repeat(width)
    } else {
        format!("{}>{}", "=".repeat(filled), " ".repeat(width - filled - 1))
    };
    format!(
        "[{bar}] {}/{}",
        crate::docker::images::human(done),
        human(total)
    )
}

/// `1.2MB`-style sizes.
pub fn human(b: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.3}{}", units[i])
    }
}

/// A progress event in Docker's words.
fn docker_progress(p: &Progress, sizes: &mut HashMap<String, u64>) -> Option<Value> {
    Some(match p {
        Progress::Resolved { .. } => return None,
        Progress::BlobStart {
            digest,
            size,
            cached,
        } => {
            sizes.insert(digest.to_string(), *size);
            if *cached {
                json!({"status": "Already exists", "progressDetail": {}, "id": short(digest)})
            } else {
                json!({"status": "Pulling fs layer", "progressDetail": {}, "id": short(digest)})
            }
        }
        Progress::BlobBytes { digest, done } => {
            let total = sizes.get(&digest.to_string()).copied().unwrap_or(0);
            json!({
                "status": "Downloading",
                "progressDetail": {"current": done, "total": total},
                "progress": progress_bar(*done, total),
                "id": short(digest),
            })
        }
        Progress::BlobDone { digest } => {
            json!({"status": "Download complete", "progressDetail": {}, "id": short(digest)})
        }
        Progress::Unpacking => json!({"status": "Extracting", "progressDetail": {}}),
    })
}

/// A streamed `application/json` answer of the lines sent to `rx`.
fn stream(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .expect("valid response")
}

#[derive(Deserialize)]
pub(super) struct CreateQuery {
    #[serde(rename = "fromImage")]
    from_image: Option<String>,
    #[serde(rename = "fromSrc")]
    from_src: Option<String>,
    tag: Option<String>,
    platform: Option<String>,
}

/// `POST /images/create`: a pull, streamed as Docker's progress messages. A failure
/// before anything was downloaded is an HTTP error (so `docker run` of an unknown image
/// fails as with dockerd).
pub(super) async fn create(
    State(s): State<DockerState>,
    Query(q): Query<CreateQuery>,
    headers: HeaderMap,
) -> DockerResult<Response> {
    if q.from_src.is_some() {
        return Err(DockerError::new(
            StatusCode::NOT_IMPLEMENTED,
            "docker import is not implemented by apex",
        ));
    }
    let image = q
        .from_image
        .filter(|i| !i.is_empty())
        .ok_or_else(|| DockerError::bad_request("fromImage is required"))?;
    let reference = match q.tag.as_deref().filter(|t| !t.is_empty()) {
        Some(t) if t.starts_with("sha256:") => format!("{image}@{t}"),
        Some(t) => format!("{image}:{t}"),
        None if image.contains('@')
            || image.rsplit('/').next().is_some_and(|l| l.contains(':')) =>
        {
            image.clone()
        }
        None => format!("{image}:latest"),
    };
    let platform = q
        .platform
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(str::parse::<Platform>)
        .transpose()
        .map_err(|e| DockerError::bad_request(format!("{e:#}")))?;
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let first = std::sync::Mutex::new(Some(first_tx));
    let sizes = std::sync::Mutex::new(HashMap::new());
    let ptx = tx.clone();
    let repo = reference
        .split(['@'])
        .next()
        .unwrap_or(&reference)
        .to_string();
    let pulling = json!({"status": format!("Pulling from {}", repo_display(&repo)), "id": tag_of(&reference)});
    let opts = PullOptions {
        platform,
        connect: Default::default(),
        progress: Some(Arc::new(move |p: Progress| {
            if let Some(f) = first.lock().expect("first").take() {
                // The stream's first line, before any layer's.
                let _ = ptx.try_send(line(pulling.clone()));
                let _ = f.send(());
            }
            if let Some(v) = docker_progress(&p, &mut sizes.lock().expect("sizes")) {
                let _ = ptx.try_send(line(v));
            }
        })),
        no_unpack: false,
        credentials: registry_auth(&headers),
    };
    let images = s.services().images().clone();
    let shown = reference.clone();
    // What the name pointed at before: pulling the same again is "up to date".
    let before = images.resolve(&reference).await.ok().map(|(r, _)| r.digest);
    let pull = tokio::spawn(async move { images.pull(&reference, opts).await });
    // The first progress event means the image exists and bytes are coming: from then
    // on errors travel in the stream. A pull that ends first answers with its status.
    if first_rx.await.is_err() {
        return match pull.await {
            Ok(Ok(r)) => {
                let msgs = [
                    json!({"status": format!("Pulling from {}", r.name.familiar_repository()), "id": r.name.tag().unwrap_or("latest")}),
                    json!({"status": format!("Digest: {}", r.record.index_digest.as_ref().unwrap_or(&r.record.digest))}),
                    json!({"status": format!("Status: Image is up to date for {}", r.name)}),
                ];
                for m in msgs {
                    let _ = tx.send(line(m)).await;
                }
                drop(tx);
                Ok(stream(rx))
            }
            Ok(Err(e)) => Err(pull_error(&shown, e)),
            Err(e) => Err(DockerError::from(anyhow::anyhow!("pull task failed: {e}"))),
        };
    }
    tokio::spawn(async move {
        let last = match pull.await {
            Ok(Ok(r)) => {
                let status = if before.as_ref() == Some(&r.record.digest) {
                    format!("Status: Image is up to date for {}", r.name)
                } else {
                    format!("Status: Downloaded newer image for {}", r.name)
                };
                vec![
                    json!({"status": format!("Digest: {}", r.record.index_digest.as_ref().unwrap_or(&r.record.digest))}),
                    json!({ "status": status }),
                ]
            }
            Ok(Err(e)) => {
                let m = e.message().to_string();
                vec![json!({"errorDetail": {"message": m}, "error": m})]
            }
            Err(e) => {
                vec![json!({"error": e.to_string(), "errorDetail": {"message": e.to_string()}})]
            }
        };
        for m in last {
            let _ = tx.send(line(m)).await;
        }
    });
    Ok(stream(rx))
}

fn pull_error(reference: &str, e: crate::error::Error) -> DockerError {
    match e.kind() {
        ErrorKind::NotFound => DockerError::not_found(format!(
            "pull access denied for {reference}, repository does not exist or may require 'docker login': {}",
            e.message()
        )),
        _ => e.into(),
    }
}

fn repo_display(repo: &str) -> String {
    apex_oci::reference::ImageRef::parse(repo)
        .map(|r| r.familiar_repository())
        .unwrap_or_else(|_| repo.to_string())
}

fn tag_of(reference: &str) -> String {
    apex_oci::reference::ImageRef::parse(reference)
        .ok()
        .and_then(|r| r.tag().map(String::from))
        .unwrap_or_else(|| "latest".into())
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    filters: Option<String>,
}

/// `GET /images/json`.
pub(super) async fn list(
    State(s): State<DockerState>,
    Query(q): Query<ListQuery>,
) -> DockerResult<Json<Vec<Value>>> {
    let f = Filters::parse(q.filters.as_deref())?;
    let all = convert::image_summaries(s.services()).await?;
    let out = all
        .into_iter()
        .filter(|i| {
            let tags: Vec<&str> = i["RepoTags"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let labels: std::collections::BTreeMap<String, String> =
                serde_json::from_value(i["Labels"].clone()).unwrap_or_default();
            f.accepts("dangling", |v| (v == "true") == tags.is_empty())
                && f.accepts("reference", |v| {
                    tags.iter()
                        .any(|t| t == &v || t.split(':').next() == Some(v) || glob_match(v, t))
                })
                && f.labels(&labels)
        })
        .collect();
    Ok(Json(out))
}

/// `*` wildcards only (Docker's reference filter patterns).
fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return false;
    }
    let mut rest = s;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(at) => rest = &rest[at + p.len()..],
                None => return false,
            }
        }
    }
    true
}

/// The image document of `GET /images/{name}/json`.
async fn inspect_doc(s: &DockerState, name: &str) -> DockerResult<Value> {
    let (rec, names) = s
        .services()
        .images()
        .resolve(name)
        .await
        .map_err(no_such_image(name))?;
    let cfg = s.services().images().config(&rec).await?;
    let tags: Vec<String> = names.iter().map(|n| apex_oci::store::familiar(n)).collect();
    Ok(json!({
        "Id": rec.config_digest.to_string(),
        "RepoTags": tags,
        "RepoDigests": rec.repo_digests,
        "Parent": "",
        "Comment": "",
        "Created": rec.created,
        "Container": "",
        "ContainerConfig": null,
        "DockerVersion": "",
        "Author": cfg.get("author").cloned().unwrap_or(json!("")),
        "Config": cfg.get("config").cloned().unwrap_or(Value::Null),
        "Architecture": cfg.get("architecture").cloned().unwrap_or(json!(convert::go_arch())),
        "Variant": cfg.get("variant").cloned().unwrap_or(Value::Null),
        "Os": cfg.get("os").cloned().unwrap_or(json!("linux")),
        "Size": rec.size,
        "VirtualSize": rec.size,
        "GraphDriver": {"Name": "apex-erofs", "Data": null},
        "RootFS": {
            "Type": "layers",
            "Layers": cfg["rootfs"]["diff_ids"].clone(),
        },
        "Metadata": {"LastTagTime": rec.added},
    }))
}

/// `GET /images/{name}/history`.
async fn history(s: &DockerState, name: &str) -> DockerResult<Value> {
    let (rec, names) = s
        .services()
        .images()
        .resolve(name)
        .await
        .map_err(no_such_image(name))?;
    let cfg = s.services().images().config(&rec).await?;
    let hist = cfg["history"].as_array().cloned().unwrap_or_default();
    let mut layers = rec.layers.iter().rev();
    let mut out = Vec::new();
    for (i, h) in hist.iter().enumerate().rev() {
        let empty = h["empty_layer"].as_bool().unwrap_or(false);
        let size = if empty {
            0
        } else {
            layers.next().map(|l| l.size).unwrap_or(0)
        };
        let top = i == hist.len() - 1;
        out.push(json!({
            "Id": if top { rec.config_digest.to_string() } else { "<missing>".into() },
            "Created": h["created"].as_str().map(|t| {
                chrono::DateTime::parse_from_rfc3339(t).map(|d| d.timestamp()).unwrap_or(0)
            }).unwrap_or(0),
            "CreatedBy": h["created_by"].as_str().unwrap_or(""),
            "Tags": if top { json!(names.iter().map(|n| apex_oci::store::familiar(n)).collect::<Vec<_>>()) } else { Value::Null },
            "Size": size,
            "Comment": h["comment"].as_str().unwrap_or(""),
        }));
    }
    Ok(json!(out))
}

#[derive(Deserialize, Default)]
pub(super) struct NamedQuery {
    repo: Option<String>,
    tag: Option<String>,
    force: Option<String>,
}

/// `GET /images/{name}/json|history|get`.
pub(super) async fn get_named(
    State(s): State<DockerState>,
    Path(rest): Path<String>,
) -> DockerResult<Response> {
    if let Some(name) = rest.strip_suffix("/json") {
        return Ok(Json(inspect_doc(&s, name).await?).into_response());
    }
    if let Some(name) = rest.strip_suffix("/history") {
        return Ok(Json(history(&s, name).await?).into_response());
    }
    if let Some(name) = rest.strip_suffix("/get") {
        return save(&s, vec![name.to_string()]).await;
    }
    Err(DockerError::not_found("page not found"))
}

/// `POST /images/{name}/tag|push`.
pub(super) async fn post_named(
    State(s): State<DockerState>,
    Path(rest): Path<String>,
    Query(q): Query<NamedQuery>,
    headers: HeaderMap,
) -> DockerResult<Response> {
    if let Some(name) = rest.strip_suffix("/tag") {
        let repo = q
            .repo
            .filter(|r| !r.is_empty())
            .ok_or_else(|| DockerError::bad_request("repo is required"))?;
        let dst = match q.tag.filter(|t| !t.is_empty()) {
            Some(t) => format!("{repo}:{t}"),
            None => repo,
        };
        s.services()
            .images()
            .tag(name, &dst)
            .await
            .map_err(no_such_image(name))?;
        return Ok(StatusCode::CREATED.into_response());
    }
    if let Some(name) = rest.strip_suffix("/push") {
        let reference = match q.tag.filter(|t| !t.is_empty()) {
            Some(t) => format!("{name}:{t}"),
            None => name.to_string(),
        };
        return push(&s, reference, registry_auth(&headers)).await;
    }
    Err(DockerError::not_found("page not found"))
}

async fn push(
    s: &DockerState,
    reference: String,
    creds: Option<Credentials>,
) -> DockerResult<Response> {
    let images = s.services().images().clone();
    let (rec, _) = images
        .resolve(&reference)
        .await
        .map_err(no_such_image(&reference))?;
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let repo = reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or(reference.as_str(), |(r, _)| r)
        .to_string();
    let _ = tx
        .send(line(
            json!({"status": format!("The push refers to repository [{repo}]")}),
        ))
        .await;
    let ptx = tx.clone();
    let progress: apex_oci::store::ProgressFn = Arc::new(move |p: Progress| {
        let v = match p {
            Progress::BlobStart { digest, .. } => {
                json!({"status": "Preparing", "progressDetail": {}, "id": short(&digest)})
            }
            Progress::BlobBytes { digest, done } => {
                json!({"status": "Pushing", "progressDetail": {"current": done}, "id": short(&digest)})
            }
            Progress::BlobDone { digest } => {
                json!({"status": "Pushed", "progressDetail": {}, "id": short(&digest)})
            }
            _ => return,
        };
        let _ = ptx.try_send(line(v));
    });
    tokio::spawn(async move {
        let res = images
            .push(&reference, Default::default(), Some(progress), creds)
            .await;
        let msgs = match res {
            Ok(r) => {
                let tag = r.tag().unwrap_or("latest").to_string();
                vec![
                    json!({"status": format!("{tag}: digest: {} size: {}", rec.digest, rec.size)}),
                    json!({"progressDetail": {}, "aux": {"Tag": tag, "Digest": rec.digest.to_string(), "Size": rec.size}}),
                ]
            }
            Err(e) => {
                let m = e.message().to_string();
                vec![json!({"errorDetail": {"message": m}, "error": m})]
            }
        };
        for m in msgs {
            let _ = tx.send(line(m)).await;
        }
    });
    Ok(stream(rx))
}

/// `DELETE /images/{name}`.
pub(super) async fn remove(
    State(s): State<DockerState>,
    Path(name): Path<String>,
    Query(q): Query<NamedQuery>,
) -> DockerResult<Json<Vec<Value>>> {
    let force = matches!(q.force.as_deref(), Some("1" | "true" | "True"));
    let lines = s
        .services()
        .images()
        .remove(&name, force)
        .await
        .map_err(no_such_image(&name))?;
    Ok(Json(
        lines
            .iter()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| json!({ k: v }))
            .collect(),
    ))
}

#[derive(Deserialize)]
pub(super) struct PruneQuery {
    filters: Option<String>,
}

/// `POST /images/prune`: dangling images (every unused one with `dangling=false`).
pub(super) async fn prune(
    State(s): State<DockerState>,
    Query(q): Query<PruneQuery>,
) -> DockerResult<Json<Value>> {
    let f = Filters::parse(q.filters.as_deref())?;
    let all = !f.accepts("dangling", |v| v == "true" || v == "1");
    let (removed, freed) = s.services().images().prune(all).await?;
    Ok(Json(json!({
        "ImagesDeleted": if removed.is_empty() { Value::Null } else {
            json!(removed.iter().map(|d| json!({"Deleted": d})).collect::<Vec<_>>())
        },
        "SpaceReclaimed": freed,
    })))
}

/// Streams the named images as an archive.
async fn save(s: &DockerState, names: Vec<String>) -> DockerResult<Response> {
    for n in &names {
        s.services()
            .images()
            .resolve(n)
            .await
            .map_err(no_such_image(n))?;
    }
    let dir = tempfile::Builder::new()
        .prefix(".save-")
        .tempdir_in(s.services().paths().home())
        .map_err(anyhow::Error::from)?;
    let out = dir.path().join("images.tar");
    s.services().images().save(names, out.clone()).await?;
    let file = tokio::fs::File::open(&out)
        .await
        .map_err(anyhow::Error::from)?;
    // The open file outlives the directory entry: the directory can go now.
    drop(dir);
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

/// `GET /images/get?names=...`.
pub(super) async fn get_many(
    State(s): State<DockerState>,
    RawQuery(q): RawQuery,
) -> DockerResult<Response> {
    let names: Vec<String> = url_pairs(q.as_deref().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| k == "names")
        .map(|(_, v)| v)
        .collect();
    if names.is_empty() {
        return Err(DockerError::bad_request("names is required"));
    }
    save(&s, names).await
}

/// Decodes `a=1&b=2&a=3` (repeated keys kept).
pub(super) fn url_pairs(q: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// `POST /images/load`: the body is an archive (OCI or docker-save).
pub(super) async fn load(State(s): State<DockerState>, req: Request) -> DockerResult<Response> {
    let dir = tempfile::Builder::new()
        .prefix(".load-")
        .tempdir_in(s.services().paths().home())
        .map_err(anyhow::Error::from)?;
    let path = dir.path().join("images.tar");
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(anyhow::Error::from)?;
    let mut reader = crate::api::body_reader(req);
    tokio::io::copy(&mut reader, &mut file)
        .await
        .map_err(|e| DockerError::bad_request(format!("reading the archive: {e}")))?;
    drop(file);
    let loaded = s
        .services()
        .images()
        .load(path)
        .await
        .map_err(|e| DockerError::bad_request(e.message().to_string()))?;
    let mut body = Vec::new();
    for n in loaded {
        let what = if n.starts_with("sha256:") {
            format!("Loaded image ID: {n}\n")
        } else {
            format!("Loaded image: {}\n", apex_oci::store::familiar(&n))
        };
        body.extend(line(json!({ "stream": what })));
    }
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("valid response"))
}

/// `GET /images/search`: there is no index to search.
pub(super) async fn search() -> DockerError {
    DockerError::new(
        StatusCode::NOT_IMPLEMENTED,
        "image search is not available in apex: it works offline from local registries; pull by name instead",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_headers_decode() {
        let mut h = HeaderMap::new();
        let raw = base64::engine::general_purpose::URL_SAFE
            .encode(r#"{"username":"u","password":"p","serveraddress":"r"}"#);
        h.insert("X-Registry-Auth", raw.parse().unwrap());
        let c = registry_auth(&h).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        h.insert("X-Registry-Auth", "e30=".parse().unwrap()); // {}
        assert!(registry_auth(&h).is_none());
    }

    #[test]
    fn helpers() {
        assert!(glob_match("busy*", "busybox:latest"));
        assert!(!glob_match("busy", "busybox"));
        assert_eq!(
            url_pairs("names=a%2Fb&names=c&x"),
            [
                ("names".into(), "a/b".into()),
                ("names".into(), "c".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(short(&"sha256:0123456789abcdef"), "0123456789ab");
        assert!(progress_bar(5, 10).starts_with("[=========================>"));
    }
}
