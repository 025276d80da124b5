//! Container routes of the Docker API.

use std::time::Duration;

use apex_agent_proto::api::PathStat;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bollard_stubs::models::ContainerCreateBody;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::convert::{self, Filters};
use super::streams::{self, Wanted};
use super::{ApiVersion, DockerError, DockerResult, DockerState};
use crate::containers::archive::PutOptions;
use crate::containers::wait::WaitCondition;
use crate::error::ErrorKind;
use crate::store::ContainerState;

/// Docker's "No such container" for a lookup that failed.
fn no_such(id: &str) -> impl Fn(crate::error::Error) -> DockerError + '_ {
    move |e| match e.kind() {
        ErrorKind::NotFound => DockerError::not_found(format!("No such container: {id}")),
        _ => e.into(),
    }
}

#[derive(Deserialize)]
pub(super) struct CreateQuery {
    name: Option<String>,
}

/// `POST /containers/create`.
pub(super) async fn create(
    State(s): State<DockerState>,
    Query(q): Query<CreateQuery>,
    body: Bytes,
) -> DockerResult<(StatusCode, Json<Value>)> {
    let body: ContainerCreateBody = serde_json::from_slice(&body)
        .map_err(|e| DockerError::bad_request(format!("invalid container config: {e}")))?;
    let req = convert::create_request(body, q.name)?;
    let image = req.image.clone();
    let created = s.services().containers().create(req).await.map_err(|e| {
        if e.kind() == ErrorKind::NotFound && e.message().starts_with("no such image") {
            DockerError::not_found(format!("No such image: {image}"))
        } else {
            e.into()
        }
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": created.id, "Warnings": []})),
    ))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    all: Option<String>,
    limit: Option<i64>,
    filters: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1" | "true" | "True"))
}

/// `GET /containers/json`.
pub(super) async fn list(
    State(s): State<DockerState>,
    Query(q): Query<ListQuery>,
) -> DockerResult<Json<Vec<Value>>> {
    let f = Filters::parse(q.filters.as_deref())?;
    let svc = s.services();
    let mut recs = svc.containers().store().list()?;
    recs.sort_by(|a, b| b.created.cmp(&a.created));
    // Like dockerd, a status filter lists stopped containers without `all`.
    let all = truthy(&q.all) || f.has("status");
    let mut out = Vec::new();
    for r in recs {
        let running = matches!(
            r.state,
            ContainerState::Running | ContainerState::Restarting
        );
        if !all && !running {
            continue;
        }
        let net = convert::docker_network(
            r.config
                .network
                .as_deref()
                .unwrap_or(apex_net::ipam::DEFAULT_NETWORK),
        );
        let health = r
            .health
            .as_ref()
            .map(|h| h.status.as_str())
            .unwrap_or("none");
        let ok = f.accepts("id", |v| r.id.starts_with(v))
            && f.accepts("name", |v| r.name.contains(v.trim_start_matches('/')))
            && f.labels(&r.config.labels)
            && f.accepts("status", |v| v == convert::state_name(&r))
            && f.accepts("ancestor", |v| {
                r.image == v || r.config.image_id.contains(v) || v.starts_with(&r.image)
            })
            && f.accepts("network", |v| {
                v == net || convert::network_id(&net).starts_with(v)
            })
            && f.accepts("volume", |v| {
                r.mounts
                    .iter()
                    .any(|m| m.name.as_deref() == Some(v) || m.destination == v)
            })
            && f.accepts("health", |v| v == health)
            && f.accepts("exited", |v| {
                r.exit_code.map(|c| c.to_string()).as_deref() == Some(v)
            });
        if ok {
            out.push(convert::container_summary(svc, &r).await);
        }
        if q.limit.is_some_and(|l| l > 0 && out.len() as i64 >= l) {
            break;
        }
    }
    Ok(Json(out))
}

/// `GET /containers/{id}/json`.
pub(super) async fn inspect(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Extension(v): Extension<ApiVersion>,
) -> DockerResult<Json<Value>> {
    let svc = s.services();
    let rec = svc.containers().resolve(&id).map_err(no_such(&id))?;
    let mut doc = convert::container_inspect(svc, &rec, v).await;
    doc["ExecIDs"] = s.execs.of_container(&rec.id);
    Ok(Json(doc))
}

/// `POST /containers/{id}/start`.
pub(super) async fn start(
    State(s): State<DockerState>,
    Path(id): Path<String>,
) -> DockerResult<Response> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    if rec.state == ContainerState::Running {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    c.start(&rec.id, false).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub(super) struct StopQuery {
    t: Option<i64>,
    signal: Option<String>,
}

/// `POST /containers/{id}/stop`.
pub(super) async fn stop(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> DockerResult<Response> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    if rec.state != ContainerState::Running {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let _ = q.signal;
    c.stop(&rec.id, q.t.map(|t| t.max(0) as u64)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /containers/{id}/restart`.
pub(super) async fn restart(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> DockerResult<StatusCode> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    c.stop(&rec.id, q.t.map(|t| t.max(0) as u64)).await?;
    c.start(&rec.id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct KillQuery {
    signal: Option<String>,
}

/// `POST /containers/{id}/kill`.
pub(super) async fn kill(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> DockerResult<StatusCode> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    let sig = match q.signal.as_deref().filter(|s| !s.is_empty()) {
        Some(name) => crate::containers::parse_signal(name)
            .ok_or_else(|| DockerError::bad_request(format!("Invalid signal: {name}")))?,
        None => 9,
    };
    if rec.state != ContainerState::Running {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!(
                "Cannot kill container: {id}: Container {} is not running",
                rec.id
            ),
        ));
    }
    c.kill(&rec.id, sig).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    condition: Option<String>,
}

/// `POST /containers/{id}/wait`: the head goes out at once (clients wait for it before
/// they start the container), the body once the condition holds.
pub(super) async fn wait(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> DockerResult<Response> {
    let cond: WaitCondition = q
        .condition
        .as_deref()
        .unwrap_or("")
        .parse()
        .map_err(DockerError::bad_request)?;
    let c = s.services().containers().clone();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<Bytes>();
    let fut = async move { c.wait_for(&rec.id, cond).await };
    // Registered before answering: nothing between now and the body is missed.
    let waiting = tokio::spawn(fut);
    tokio::spawn(async move {
        let body = match waiting.await {
            Ok(Ok(w)) => json!({"StatusCode": w.exit_code, "Error": null}),
            Ok(Err(e)) => json!({"StatusCode": -1, "Error": {"Message": e.message()}}),
            Err(e) => json!({"StatusCode": -1, "Error": {"Message": e.to_string()}}),
        };
        let _ = tx.send(Bytes::from(body.to_string()));
    });
    let stream = futures_util::stream::once(async move {
        rx.await
            .map_err(|_| std::io::Error::other("wait interrupted"))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

#[derive(Deserialize)]
pub(super) struct RemoveQuery {
    force: Option<String>,
    v: Option<String>,
}

/// `DELETE /containers/{id}`.
pub(super) async fn remove(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> DockerResult<StatusCode> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    let force = truthy(&q.force);
    if rec.state == ContainerState::Running && !force {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("cannot remove container \"/{}\": container is running: stop the container before removing or force remove", rec.name),
        ));
    }
    c.remove(&rec.id, force, truthy(&q.v)).await?;
    s.execs.forget_container(&rec.id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct RenameQuery {
    name: String,
}

/// `POST /containers/{id}/rename`.
pub(super) async fn rename(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<RenameQuery>,
) -> DockerResult<StatusCode> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    c.rename(&rec.id, q.name.trim_start_matches('/')).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/pause`.
pub(super) async fn pause(
    State(s): State<DockerState>,
    Path(id): Path<String>,
) -> DockerResult<StatusCode> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    c.pause(&rec.id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/unpause`.
pub(super) async fn unpause(
    State(s): State<DockerState>,
    Path(id): Path<String>,
) -> DockerResult<StatusCode> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    c.pause(&rec.id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /containers/{id}/top`: `ps -ef` of the container.
pub(super) async fn top(
    State(s): State<DockerState>,
    Path(id): Path<String>,
) -> DockerResult<Json<Value>> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    let procs = c.top(&rec.id).await?;
    let rows: Vec<Vec<String>> = procs
        .into_iter()
        .map(|p| {
            vec![
                p.user,
                p.pid.to_string(),
                p.ppid.to_string(),
                "0".into(),
                p.stime,
                p.tty,
                p.time,
                p.cmd,
            ]
        })
        .collect();
    Ok(Json(json!({
        "Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
        "Processes": rows,
    })))
}

#[derive(Deserialize)]
pub(super) struct ResizeQuery {
    h: Option<u16>,
    w: Option<u16>,
}

/// `POST /containers/{id}/resize`.
pub(super) async fn resize(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<ResizeQuery>,
) -> DockerResult<StatusCode> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    c.resize(&rec.id, q.h.unwrap_or(24), q.w.unwrap_or(80))
        .await?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
pub(super) struct LogsQuery {
    follow: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    since: Option<String>,
    until: Option<String>,
    timestamps: Option<String>,
    tail: Option<String>,
}

fn parse_unix(t: &str) -> Option<i64> {
    t.parse::<f64>().ok().map(|s| (s * 1e9) as i64)
}

/// `GET /containers/{id}/logs`.
pub(super) async fn logs(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> DockerResult<Response> {
    let c = s.services().containers();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    let (out, err) = (truthy(&q.stdout), truthy(&q.stderr));
    if !out && !err {
        return Err(DockerError::bad_request(
            "You must choose at least one stream",
        ));
    }
    let tail = match q.tail.as_deref() {
        None | Some("all") | Some("") => None,
        Some(t) => Some(
            t.parse::<usize>()
                .map_err(|_| DockerError::bad_request(format!("invalid tail {t:?}")))?,
        ),
    };
    let since = q.since.as_deref().and_then(parse_unix).filter(|s| *s > 0);
    let until = q.until.as_deref().and_then(parse_unix).filter(|u| *u > 0);
    let tty = rec.config.process.terminal;
    let stamps = truthy(&q.timestamps);
    let mut entries = c.logs(&rec.id, tail, truthy(&q.follow)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        while let Some(batch) = entries.recv().await {
            let mut buf = Vec::new();
            for e in batch {
                let t = chrono::DateTime::parse_from_rfc3339(&e.time)
                    .ok()
                    .and_then(|d| d.timestamp_nanos_opt())
                    .unwrap_or(0);
                if since.is_some_and(|s| t < s) || until.is_some_and(|u| t > u) {
                    continue;
                }
                let kind = if e.stream == "stderr" {
                    if !err {
                        continue;
                    }
                    apex_shim::stream::Kind::Stderr
                } else {
                    if !out {
                        continue;
                    }
                    apex_shim::stream::Kind::Stdout
                };
                let line = if stamps {
                    format!("{} {}", crate::containers::log_timestamp(&e.time), e.line)
                } else {
                    e.line
                };
                buf.extend(streams::encode(kind, line.as_bytes(), tty));
            }
            if !buf.is_empty() && tx.send(Bytes::from(buf)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let ct = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, ct)
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

#[derive(Deserialize)]
pub(super) struct AttachQuery {
    stream: Option<String>,
    stdin: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    logs: Option<String>,
}

/// `POST /containers/{id}/attach`: hijacks the connection. Attaching to a container that
/// has not started yet holds its process until the client is connected, so no output is
/// lost (`docker run` attaches, then starts).
pub(super) async fn attach(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    req: Request,
) -> DockerResult<Response> {
    let c = s.services().containers().clone();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    let want = Wanted {
        stdin: truthy(&q.stdin) && rec.config.stdin_open,
        stdout: truthy(&q.stdout),
        stderr: truthy(&q.stderr),
        tty: rec.config.process.terminal,
    };
    if !truthy(&q.stream) && truthy(&q.logs) {
        // Logs only: the past output, then the connection closes.
        let logs = self::logs_bytes(&c, &rec.id, want).await?;
        return streams::hijack(req, want.tty, move |mut io| async move {
            use tokio::io::AsyncWriteExt;
            let _ = io.write_all(&logs).await;
            let _ = io.shutdown().await;
        });
    }
    let stream = c.attach_when_started(&rec.id, want.stdin)?;
    streams::hijack(req, want.tty, move |io| async move {
        match stream.await {
            Ok(stream) => {
                streams::relay(io, stream, want, None, |_| {}).await;
            }
            Err(e) => tracing::debug!("attach ended before the start: {e}"),
        }
    })
}

async fn logs_bytes(
    c: &std::sync::Arc<crate::containers::Containers>,
    id: &str,
    want: Wanted,
) -> DockerResult<Vec<u8>> {
    let mut rx = c.logs(id, None, false).await?;
    let mut out = Vec::new();
    while let Some(batch) = rx.recv().await {
        for e in batch {
            let kind = if e.stream == "stderr" {
                apex_shim::stream::Kind::Stderr
            } else {
                apex_shim::stream::Kind::Stdout
            };
            let shown = match kind {
                apex_shim::stream::Kind::Stderr => want.stderr,
                _ => want.stdout,
            };
            if shown {
                out.extend(streams::encode(kind, e.line.as_bytes(), want.tty));
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
pub(super) struct StatsQuery {
    stream: Option<String>,
    #[serde(rename = "one-shot")]
    one_shot: Option<String>,
}

fn unix_ns(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .and_then(|d| d.timestamp_nanos_opt())
        .unwrap_or(0)
}

/// One `docker stats` document from two samples (`pre` may be absent).
fn stats_json(
    rec: &crate::model::ContainerRecord,
    cur: &apex_shim::proto::Stats,
    pre: Option<&apex_shim::proto::Stats>,
) -> Value {
    let cpu = |s: Option<&apex_shim::proto::Stats>| match s {
        Some(s) => json!({
            "cpu_usage": {"total_usage": s.cpu_usage_ns, "usage_in_kernelmode": 0, "usage_in_usermode": s.cpu_usage_ns},
            // Wall time on every vCPU: the share of one CPU comes out as docker shows it.
            "system_cpu_usage": unix_ns(&s.read_at).max(0) as u64 * u64::from(s.cpus.max(1)),
            "online_cpus": s.cpus.max(1),
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }),
        None => json!({"cpu_usage": {"total_usage": 0}, "throttling_data": {}}),
    };
    json!({
        "read": cur.read_at,
        "preread": pre.map(|p| p.read_at.clone()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        "pids_stats": {"current": cur.pids},
        "blkio_stats": {"io_service_bytes_recursive": null},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu(Some(cur)),
        "precpu_stats": cpu(pre),
        "memory_stats": {
            "usage": cur.memory_usage_bytes,
            "limit": cur.memory_limit_bytes,
            "stats": {"inactive_file": 0, "host_rss": cur.vm_rss_bytes},
        },
        "name": format!("/{}", rec.name),
        "id": rec.id,
        "networks": {},
    })
}

/// `GET /containers/{id}/stats`: a sample every second while streaming.
pub(super) async fn stats(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<StatsQuery>,
) -> DockerResult<Response> {
    let c = s.services().containers().clone();
    let rec = c.resolve(&id).map_err(no_such(&id))?;
    let stream = q
        .stream
        .as_deref()
        .is_none_or(|v| matches!(v, "1" | "true"));
    if rec.state != ContainerState::Running {
        // Docker answers zeros for a container that does not run.
        let zero = apex_shim::proto::Stats {
            read_at: "0001-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        return Ok(Json(stats_json(&rec, &zero, None)).into_response());
    }
    if !stream {
        let first = c.stats(&rec.id).await?;
        if truthy(&q.one_shot) {
            return Ok(Json(stats_json(&rec, &first, None)).into_response());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = c.stats(&rec.id).await?;
        return Ok(Json(stats_json(&rec, &second, Some(&first))).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut pre: Option<apex_shim::proto::Stats> = None;
        loop {
            let Ok(cur) = c.stats(&rec.id).await else {
                return;
            };
            let mut line = stats_json(&rec, &cur, pre.as_ref()).to_string();
            line.push('\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
            pre = Some(cur);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .expect("valid response"))
}

#[derive(Deserialize)]
pub(super) struct ArchiveQuery {
    path: String,
    #[serde(rename = "noOverwriteDirNonDir")]
    no_overwrite_dir_non_dir: Option<String>,
    #[serde(rename = "copyUIDGID")]
    copy_uid_gid: Option<String>,
}

/// Go's `os.FileMode` of a `st_mode` (what Docker's path stat carries).
fn go_mode(mode: u32) -> u32 {
    let mut m = mode & 0o777;
    let t = mode & 0o170000;
    m |= match t {
        0o040000 => 1 << 31,
        0o120000 => 1 << 27,
        0o010000 => 1 << 25,
        0o140000 => 1 << 24,
        0o060000 => 1 << 26,
        0o020000 => (1 << 26) | (1 << 21),
        _ => 0,
    };
    if mode & 0o4000 != 0 {
        m |= 1 << 23;
    }
    if mode & 0o2000 != 0 {
        m |= 1 << 22;
    }
    if mode & 0o1000 != 0 {
        m |= 1 << 20;
    }
    m
}

fn docker_stat(st: &PathStat) -> DockerResult<HeaderValue> {
    let mtime = chrono::DateTime::from_timestamp(st.mtime, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let j = json!({
        "name": st.name,
        "size": st.size,
        "mode": go_mode(st.mode),
        "mtime": mtime,
        "linkTarget": st.link_target,
    });
    let b64 = base64::engine::general_purpose::STANDARD.encode(j.to_string());
    HeaderValue::from_str(&b64).map_err(|e| DockerError::from(anyhow::anyhow!("{e}")))
}

const STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

fn archive_error(id: &str) -> impl Fn(crate::error::Error) -> DockerError + '_ {
    move |e| match e.kind() {
        ErrorKind::NotFound if e.message().starts_with("no such container") => {
            DockerError::not_found(format!("No such container: {id}"))
        }
        _ => e.into(),
    }
}

/// `HEAD /containers/{id}/archive`.
pub(super) async fn archive_stat(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<ArchiveQuery>,
) -> DockerResult<Response> {
    let st = s
        .services()
        .containers()
        .archive_stat(&id, &q.path)
        .await
        .map_err(archive_error(&id))?;
    Ok(Response::builder()
        .header(STAT_HEADER, docker_stat(&st)?)
        .body(Body::empty())
        .expect("valid response"))
}

/// `GET /containers/{id}/archive`.
pub(super) async fn archive_get(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<ArchiveQuery>,
) -> DockerResult<Response> {
    let (st, reader) = s
        .services()
        .containers()
        .archive_get(&id, &q.path)
        .await
        .map_err(archive_error(&id))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(STAT_HEADER, docker_stat(&st)?)
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

/// `PUT /containers/{id}/archive`.
pub(super) async fn archive_put(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<ArchiveQuery>,
    req: Request,
) -> DockerResult<StatusCode> {
    let reader = crate::api::body_reader(req);
    let opts = PutOptions {
        owner: truthy(&q.copy_uid_gid),
        no_overwrite_dir_non_dir: truthy(&q.no_overwrite_dir_non_dir),
    };
    s.services()
        .containers()
        .archive_put(&id, &q.path, reader, opts)
        .await
        .map_err(archive_error(&id))?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
pub(super) struct PruneQuery {
    filters: Option<String>,
}

/// `POST /containers/prune`.
pub(super) async fn prune(
    State(s): State<DockerState>,
    Query(q): Query<PruneQuery>,
) -> DockerResult<Json<Value>> {
    let f = Filters::parse(q.filters.as_deref())?;
    let c = s.services().containers();
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for r in c.store().list()? {
        let stopped = matches!(r.state, ContainerState::Exited | ContainerState::Created);
        if !stopped || !f.labels(&r.config.labels) {
            continue;
        }
        let disk = crate::info::disk_usage(&c.bundle(&r.id).upper_disk());
        if c.remove(&r.id, false, false).await.is_ok() {
            reclaimed += disk;
            deleted.push(r.id);
        }
    }
    Ok(Json(json!({
        "ContainersDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) },
        "SpaceReclaimed": reclaimed,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_file_modes() {
        assert_eq!(go_mode(0o100644), 0o644);
        assert_eq!(go_mode(0o040755), (1 << 31) | 0o755);
        assert_eq!(go_mode(0o120777), (1 << 27) | 0o777);
        assert_eq!(go_mode(0o104755), (1 << 23) | 0o755);
        assert_eq!(go_mode(0o041777), (1 << 31) | (1 << 20) | 0o777);
    }
}
