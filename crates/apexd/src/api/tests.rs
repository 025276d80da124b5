use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

const OPENAPI: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/api/openapi.yaml"
));

struct Fixture {
    _dir: tempfile::TempDir,
    home: PathBuf,
    app: Router,
    shutdown: Arc<Notify>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    let paths = Paths::new(&home);
    let store = StateStore::open(&paths.state_db()).unwrap();
    let shutdown = Arc::new(Notify::new());
    let accel = home.join("accel.json");
    std::fs::write(&accel, r#"{"accel":"tcg"}"#).unwrap();
    let state = AppState::with_accel_cache(paths, Arc::new(store), shutdown.clone(), accel);
    Fixture {
        _dir: dir,
        home,
        app: router(state),
        shutdown,
    }
}

async fn call(app: &Router, method: &str, path: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp.headers().get("content-type").cloned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        ct.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{method} {path}: {}",
        String::from_utf8_lossy(&body)
    );
    if method == "HEAD" {
        // axum drops the body of HEAD answers; the status and type still say it all.
        return (status, serde_json::Value::Null);
    }
    (status, serde_json::from_slice(&body).unwrap())
}

#[test]
fn openapi_documents_exactly_the_served_routes() {
    let doc: serde_yaml::Value = serde_yaml::from_str(OPENAPI).unwrap();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_mapping().expect("paths") {
        for (method, _) in ops.as_mapping().expect("operations") {
            let method = method.as_str().unwrap().to_ascii_uppercase();
            documented.insert((method, path.as_str().unwrap().to_string()));
        }
    }
    let served: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(documented, served);
    assert_eq!(served.len(), ROUTES.len(), "duplicate route in ROUTES");
}

/// Every route is wired to a handler: it answers JSON that is neither "no such route"
/// nor "method not allowed" (with a made-up `{id}` and no body, most answer 4xx).
#[tokio::test]
async fn every_route_is_served() {
    let f = fixture();
    for r in ROUTES {
        let path = r.path.replace("{id}", "nope").replace("{name}", "nope");
        let (status, body) = call(&f.app, r.method, &path).await;
        let msg = body["message"].as_str().unwrap_or_default();
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !msg.starts_with("no such route"),
            "{} {}: {status} {body}",
            r.method,
            r.path
        );
        if !r.path.contains('{') && r.method == "GET" {
            assert!(
                status.is_success(),
                "{} {}: {status} {body}",
                r.method,
                r.path
            );
        }
    }
}

#[tokio::test]
async fn container_routes_report_unknown_containers_and_bad_bodies() {
    let f = fixture();
    let (status, body) = call(&f.app, "GET", "/v1/containers/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "no such container: nope");
    let (status, body) = call(&f.app, "POST", "/v1/containers").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(&f.app, "POST", "/v1/containers/nope/kill?signal=BOGUS").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(&f.app, "POST", "/v1/containers/nope/attach").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "attach needs an upgrade: {body}"
    );
    let (status, body) = call(&f.app, "GET", "/v1/containers?all=true").await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!([])));
    let (status, body) = call(&f.app, "POST", "/v1/containers/prune").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"deleted": []}));
}

#[tokio::test]
async fn version_reports_this_build() {
    let f = fixture();
    let (status, body) = call(&f.app, "GET", "/v1/version").await;
    assert_eq!(status, StatusCode::OK);
    let v: VersionInfo = serde_json::from_value(body).unwrap();
    assert_eq!(v, VersionInfo::current());
    assert_eq!(v.api_version, "1");
}

#[tokio::test]
async fn status_counts_and_accelerator() {
    let f = fixture();
    let (status, body) = call(&f.app, "GET", "/v1/system/status").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let s: SystemStatus = serde_json::from_value(body).unwrap();
    assert_eq!(s.pid, std::process::id());
    assert_eq!(s.home, f.home);
    assert_eq!((s.containers, s.images), (0, 0));
    assert_eq!(s.accelerator, "tcg");
}

#[tokio::test]
async fn df_lists_the_four_dirs() {
    let f = fixture();
    std::fs::create_dir_all(f.home.join("logs")).unwrap();
    std::fs::write(f.home.join("logs/x"), vec![0u8; 50_000]).unwrap();
    let (status, body) = call(&f.app, "GET", "/v1/system/df").await;
    assert_eq!(status, StatusCode::OK);
    let df: DiskUsage = serde_json::from_value(body).unwrap();
    let names: Vec<_> = df.dirs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, info::DF_DIRS);
    let logs = df.dirs.iter().find(|d| d.name == "logs").unwrap();
    assert!(logs.bytes >= 50_000);
    assert!(df.dirs.iter().find(|d| d.name == "db").unwrap().bytes > 0);
    assert_eq!(df.total, df.dirs.iter().map(|d| d.bytes).sum::<u64>());
}

#[tokio::test]
async fn images_empty_list() {
    let f = fixture();
    let (status, body) = call(&f.app, "GET", "/v1/images").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!([]));
}

#[tokio::test]
async fn shutdown_notifies() {
    let f = fixture();
    let (status, body) = call(&f.app, "POST", "/v1/system/shutdown").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["message"], "shutting down");
    tokio::time::timeout(std::time::Duration::from_secs(1), f.shutdown.notified())
        .await
        .expect("shutdown notified");
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json_errors() {
    let f = fixture();
    let (status, body) = call(&f.app, "GET", "/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"].as_str().unwrap().contains("/v1/nope"),
        "{body}"
    );
    let (status, body) = call(&f.app, "DELETE", "/v1/version").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["message"].is_string(), "{body}");
}

async fn call_json(
    app: &Router,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn network_routes_in_user_mode() {
    let f = fixture();
    let (status, body) = call(&f.app, "GET", "/v1/networks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["name"], "default", "{body}");
    assert_eq!(body[0]["subnet"], "10.213.0.0/24");
    assert_eq!(body[0]["bridge"], "", "no bridges in user mode");
    let (status, body) = call_json(
        &f.app,
        "POST",
        "/v1/networks",
        serde_json::json!({"name": "front"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["subnet"], "10.213.1.0/24");
    assert_eq!(body["gateway"], "10.213.1.1");
    assert_eq!(body["internal"], false);
    for (req, code, needle) in [
        (
            serde_json::json!({"name": "front"}),
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            serde_json::json!({"name": "x", "subnet": "10.213.1.128/25"}),
            StatusCode::CONFLICT,
            "overlaps network front",
        ),
        (
            serde_json::json!({"name": "none"}),
            StatusCode::BAD_REQUEST,
            "reserved",
        ),
        (
            serde_json::json!({"name": "-x"}),
            StatusCode::BAD_REQUEST,
            "invalid network name",
        ),
        (
            serde_json::json!({"name": "y", "subnet": "10.9.0.1/24"}),
            StatusCode::BAD_REQUEST,
            "did you mean 10.9.0.0/24",
        ),
    ] {
        let (status, body) = call_json(&f.app, "POST", "/v1/networks", req.clone()).await;
        assert_eq!(status, code, "{req}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{req}: {body}"
        );
    }
    let (status, body) = call(&f.app, "GET", "/v1/networks/front").await;
    assert_eq!((status, &body["name"]), (StatusCode::OK, &"front".into()));
    let (status, body) = call(&f.app, "GET", "/v1/networks/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "no such network: nope");
    let (status, _) = call(&f.app, "DELETE", "/v1/networks/default").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Containers: the network must exist and the ports parse (checked before the image).
    let (status, body) = call_json(
        &f.app,
        "POST",
        "/v1/containers",
        serde_json::json!({"image": "busybox", "network": "nosuch"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["message"], "no such network: nosuch");
    let (status, body) = call_json(
        &f.app,
        "POST",
        "/v1/containers",
        serde_json::json!({"image": "busybox", "publish": ["8080:80/sctp"]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("sctp"), "{body}");
    let (status, body) = call(&f.app, "POST", "/v1/networks/prune").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"deleted": ["front"]}));
    let (_, body) = call(&f.app, "GET", "/v1/system/status").await;
    assert_eq!(body["network_mode"], "user");
    assert_eq!(body["network_reason"], "test");
    assert_eq!(body["dns"], "");
}
