//! Exec routes: create, start (hijacked or detached), resize, inspect.
//!
//! The exec itself is the containers service's (its registry, the helper's exec); what
//! is kept here is what only Docker's API asks for: whether an exec still runs, its exit
//! code for `exec inspect`, and the way to its terminal for `exec resize`.

use std::collections::HashMap;
use std::sync::Mutex;

use apex_shim::stream::{read_frame, Frame, Kind, Resize};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::streams::{self, Wanted};
use super::{DockerError, DockerResult, DockerState};
use crate::model::ExecRequest;
use crate::store::ContainerState;

/// What Docker's API remembers about an exec.
struct Entry {
    container: String,
    want: Wanted,
    cmd: Vec<String>,
    user: String,
    running: bool,
    exit_code: Option<i32>,
    control: Option<mpsc::Sender<Frame>>,
}

/// The execs created through the Docker API.
#[derive(Default)]
pub struct Execs(Mutex<HashMap<String, Entry>>);

impl Execs {
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        self.0.lock().expect("execs").get_mut(id).map(f)
    }

    /// The ids of a container's execs, for its inspect document.
    pub fn of_container(&self, container: &str) -> Value {
        let ids: Vec<String> = self
            .0
            .lock()
            .expect("execs")
            .iter()
            .filter(|(_, e)| e.container == container)
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            Value::Null
        } else {
            json!(ids)
        }
    }

    /// Forgets a removed container's execs.
    pub fn forget_container(&self, container: &str) {
        self.0
            .lock()
            .expect("execs")
            .retain(|_, e| e.container != container);
    }

    fn finished(&self, id: &str, code: Option<i32>) {
        self.with(id, |e| {
            e.running = false;
            e.exit_code = Some(code.unwrap_or(-1));
            e.control = None;
        });
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateBody {
    #[serde(default)]
    attach_stdin: bool,
    #[serde(default)]
    attach_stdout: bool,
    #[serde(default)]
    attach_stderr: bool,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
}

/// Docker's 409 for an exec in a container that is not running.
fn not_running(container: &str) -> DockerError {
    DockerError::new(
        StatusCode::CONFLICT,
        format!("Container {container} is not running"),
    )
}

/// `POST /containers/{id}/exec`.
pub(super) async fn create(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    body: Bytes,
) -> DockerResult<(StatusCode, Json<Value>)> {
    let body: CreateBody = serde_json::from_slice(&body)
        .map_err(|e| DockerError::bad_request(format!("invalid exec config: {e}")))?;
    let c = s.services().containers();
    let rec = c
        .resolve(&id)
        .map_err(|_| DockerError::not_found(format!("No such container: {id}")))?;
    if rec.state != ContainerState::Running {
        return Err(not_running(&rec.id));
    }
    if rec.paused {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!(
                "Container {} is paused, unpause the container before exec",
                rec.id
            ),
        ));
    }
    let cmd = body.cmd.unwrap_or_default();
    if cmd.is_empty() {
        return Err(DockerError::bad_request("No exec command specified"));
    }
    let req = ExecRequest {
        command: cmd.clone(),
        env: body.env.unwrap_or_default(),
        workdir: body.working_dir.filter(|w| !w.is_empty()),
        user: body.user.clone().filter(|u| !u.is_empty()),
        tty: body.tty,
        stdin: body.attach_stdin,
    };
    let created = c.exec_create(&rec.id, req)?;
    s.execs.0.lock().expect("execs").insert(
        created.id.clone(),
        Entry {
            container: rec.id.clone(),
            want: Wanted {
                stdin: body.attach_stdin,
                stdout: body.attach_stdout,
                stderr: body.attach_stderr,
                tty: body.tty,
            },
            cmd,
            user: body.user.unwrap_or_default(),
            running: false,
            exit_code: None,
            control: None,
        },
    );
    Ok((StatusCode::CREATED, Json(json!({"Id": created.id}))))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct StartBody {
    #[serde(default)]
    detach: bool,
}

/// `POST /exec/{id}/start`.
pub(super) async fn start(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    req: Request,
) -> DockerResult<Response> {
    let (want, container) = s
        .execs
        .with(&id, |e| (e.want, e.container.clone()))
        .ok_or_else(|| DockerError::not_found(format!("No such exec instance: {id}")))?;
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|e| DockerError::bad_request(format!("reading the body: {e}")))?;
    let opts: StartBody = if bytes.is_empty() {
        StartBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| DockerError::bad_request(format!("invalid exec start config: {e}")))?
    };
    let running = s
        .services()
        .containers()
        .resolve(&container)
        .is_ok_and(|r| r.state == ContainerState::Running);
    if !running {
        return Err(not_running(&container));
    }
    let (ctl_tx, ctl_rx) = mpsc::channel(8);
    s.execs.with(&id, |e| {
        e.running = true;
        e.control = Some(ctl_tx);
    });
    let execs = s.execs.clone();
    if opts.detach {
        let shim = match s.services().containers().exec_start(&id).await {
            Ok(shim) => shim,
            Err(e) => {
                execs.finished(&id, None);
                return Err(e.into());
            }
        };
        // Nobody reads the output: drain it until the exec ends.
        tokio::spawn(async move {
            let mut shim = shim;
            let mut code = None;
            while let Ok(Some(f)) = read_frame(&mut shim).await {
                if f.kind == Kind::Exit {
                    code = f
                        .parse::<apex_shim::stream::Exit>()
                        .ok()
                        .map(|e| e.exit_code);
                    break;
                }
            }
            execs.finished(&id, code);
        });
        return Ok(StatusCode::OK.into_response());
    }
    let req = Request::from_parts(parts, axum::body::Body::empty());
    let containers = s.services().containers().clone();
    streams::hijack(req, want.tty, move |mut io| async move {
        // The process starts only once the 101 response has gone out, as with dockerd.
        // Output that reached the client together with the response head would be lost:
        // docker-py parses the head with a buffered reader, then reads the raw socket.
        match containers.exec_start(&id).await {
            Ok(shim) => {
                streams::relay(io, shim, want, Some(ctl_rx), |exit| {
                    execs.finished(&id, exit.map(|e| e.exit_code))
                })
                .await
            }
            Err(e) => {
                let msg = format!("cannot start the exec: {}\n", e.message());
                let _ = io
                    .write_all(&streams::encode(Kind::Stderr, msg.as_bytes(), want.tty))
                    .await;
                execs.finished(&id, Some(126));
                let _ = io.shutdown().await;
            }
        }
    })
}

#[derive(Deserialize)]
pub(super) struct ResizeQuery {
    h: Option<u16>,
    w: Option<u16>,
}

/// `POST /exec/{id}/resize`.
pub(super) async fn resize(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    Query(q): Query<ResizeQuery>,
) -> DockerResult<StatusCode> {
    let control = s
        .execs
        .with(&id, |e| e.control.clone())
        .ok_or_else(|| DockerError::not_found(format!("No such exec instance: {id}")))?;
    let Some(control) = control else {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("exec {id} is not running"),
        ));
    };
    let r = Resize {
        rows: q.h.unwrap_or(24),
        cols: q.w.unwrap_or(80),
    };
    let _ = control.send(Frame::json(Kind::Resize, &r)).await;
    Ok(StatusCode::OK)
}

/// `GET /exec/{id}/json`.
pub(super) async fn inspect(
    State(s): State<DockerState>,
    Path(id): Path<String>,
) -> DockerResult<Json<Value>> {
    let doc = s
        .execs
        .with(&id, |e| {
            let (entry, args) = e
                .cmd
                .split_first()
                .map_or((String::new(), vec![]), |(a, b)| (a.clone(), b.to_vec()));
            json!({
                "ID": id,
                "Running": e.running,
                "ExitCode": e.exit_code,
                "ProcessConfig": {
                    "privileged": false,
                    "user": e.user,
                    "tty": e.want.tty,
                    "entrypoint": entry,
                    "arguments": args,
                },
                "OpenStdin": e.want.stdin,
                "OpenStderr": e.want.stderr,
                "OpenStdout": e.want.stdout,
                "CanRemove": false,
                "ContainerID": e.container,
                "DetachKeys": "",
                "Pid": 0,
            })
        })
        .ok_or_else(|| DockerError::not_found(format!("No such exec instance: {id}")))?;
    Ok(Json(doc))
}
