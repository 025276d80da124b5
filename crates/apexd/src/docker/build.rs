//! `POST /build` and `POST /build/prune`: Docker's classic builder protocol (what
//! `docker build` speaks with `DOCKER_BUILDKIT=0`, and docker-compose and docker-py)
//! translated onto the builds service: the query becomes a [`BuildRequest`], and the
//! service's events become the classic JSON messages (`{"stream": "Step 1/3 : ..."}`,
//! `{"aux": {"ID": ...}}`, `{"errorDetail": ...}`).

use std::collections::BTreeMap;

use axum::extract::{RawQuery, Request, State};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use super::images::url_pairs;
use super::{DockerError, DockerResult, DockerState};
use crate::model::{BuildEvent, BuildRequest};

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "true" | "True" | "yes")
}

/// A JSON map parameter (`buildargs`, `labels`); `null` values are left out.
fn json_map(name: &str, v: &str) -> Result<BTreeMap<String, String>, DockerError> {
    let m: BTreeMap<String, Option<String>> = serde_json::from_str(v)
        .map_err(|e| DockerError::bad_request(format!("invalid {name}: {e}")))?;
    Ok(m.into_iter().filter_map(|(k, v)| Some((k, v?))).collect())
}

/// The build options of a `POST /build` query, and whether it is quiet (`q`).
fn options(q: &str) -> Result<(BuildRequest, bool), DockerError> {
    let mut r = BuildRequest::default();
    let mut quiet = false;
    for (k, v) in url_pairs(q) {
        match k.as_str() {
            "t" if !v.is_empty() => r.tags.push(v),
            "dockerfile" if !v.is_empty() => r.dockerfile = Some(v),
            "buildargs" if !v.is_empty() => r.build_args = json_map("buildargs", &v)?,
            "labels" if !v.is_empty() => r.labels = json_map("labels", &v)?,
            "target" if !v.is_empty() => r.target = Some(v),
            "nocache" => r.no_cache = truthy(&v),
            "pull" => r.pull = truthy(&v) || (!v.is_empty() && v != "0" && v != "false"),
            "q" => quiet = truthy(&v),
            "platform" if !v.is_empty() => r.platform = Some(v),
            "networkmode" if !v.is_empty() && v != "default" => r.network = Some(v),
            "version" if v == "2" => return Err(DockerError::bad_request(
                "BuildKit is not supported by apex: use the classic builder (DOCKER_BUILDKIT=0)",
            )),
            "remote" if !v.is_empty() => {
                return Err(DockerError::bad_request(
                    "remote build contexts are not supported by apex: send the context as a tar",
                ))
            }
            _ => {}
        }
    }
    Ok((r, quiet))
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// The classic builder's messages for one event.
fn render(ev: &BuildEvent, quiet: bool) -> Vec<Value> {
    let stream = |s: String| json!({ "stream": s });
    match ev {
        BuildEvent::Error { message } => {
            vec![json!({"errorDetail": {"message": message}, "error": message})]
        }
        BuildEvent::Result { id, tags, .. } => {
            let mut out = vec![json!({"aux": {"ID": id}})];
            if !quiet {
                out.push(stream(format!("Successfully built {}\n", short(id))));
                out.extend(
                    tags.iter()
                        .map(|t| stream(format!("Successfully tagged {t}\n"))),
                );
            } else {
                out.push(stream(format!("{id}\n")));
            }
            out
        }
        _ if quiet => vec![],
        BuildEvent::Step { n, total, text, .. } => {
            vec![stream(format!("Step {n}/{total} : {text}\n"))]
        }
        BuildEvent::Output { data, .. } => vec![stream(data.clone())],
        BuildEvent::Cached { .. } => vec![stream(" ---> Using cache\n".into())],
        BuildEvent::Done { id, .. } if !id.is_empty() => {
            vec![stream(format!(" ---> {}\n", short(id)))]
        }
        BuildEvent::Done { .. } => vec![],
    }
}

/// `POST /build`.
pub(super) async fn build(
    State(s): State<DockerState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> DockerResult<Response> {
    let (opts, quiet) = options(q.as_deref().unwrap_or(""))?;
    let reader = crate::api::body_reader(req);
    let rx = s
        .services()
        .builds()
        .start(opts, reader, move |ev: &BuildEvent| {
            let lines = render(ev, quiet);
            if lines.is_empty() {
                return None;
            }
            let mut out = Vec::new();
            for l in lines {
                serde_json::to_writer(&mut out, &l).expect("serializable");
                out.push(b'\n');
            }
            Some(out.into())
        })
        .await?;
    Ok(crate::api::streamed("application/json", rx))
}

/// `POST /build/prune`.
pub(super) async fn prune(State(s): State<DockerState>) -> DockerResult<Json<Value>> {
    let (_, _, reclaimed) = s.services().builds().prune().await?;
    Ok(Json(
        json!({"CachesDeleted": [], "SpaceReclaimed": reclaimed}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_classic_query() {
        let (r, quiet) = options(
            "t=a%3A1&t=b&dockerfile=sub%2FDf&buildargs=%7B%22X%22%3A%221%22%2C%22U%22%3Anull%7D&nocache=1&q=1&networkmode=default",
        )
        .unwrap();
        assert_eq!(r.tags, ["a:1", "b"]);
        assert_eq!(r.dockerfile.as_deref(), Some("sub/Df"));
        assert_eq!(r.build_args.len(), 1);
        assert!(r.no_cache && quiet && r.network.is_none());
        assert!(options("version=2").is_err());
    }

    #[test]
    fn renders_classic_messages() {
        let step = BuildEvent::Step {
            n: 2,
            total: 5,
            stage: None,
            pos: 2,
            stage_total: 5,
            text: "RUN make".into(),
        };
        assert_eq!(
            render(&step, false),
            [json!({"stream": "Step 2/5 : RUN make\n"})]
        );
        assert!(render(&step, true).is_empty());
        let res = BuildEvent::Result {
            id: "sha256:0123456789abcdef".into(),
            digest: String::new(),
            tags: vec!["x:latest".into()],
            cached: 0,
            steps: 1,
        };
        let out = render(&res, false);
        assert_eq!(out[0]["aux"]["ID"], "sha256:0123456789abcdef");
        assert_eq!(out[1]["stream"], "Successfully built 0123456789ab\n");
        assert_eq!(out[2]["stream"], "Successfully tagged x:latest\n");
    }
}
