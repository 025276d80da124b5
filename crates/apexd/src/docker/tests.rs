//! The Docker front door over services with user-mode networking and a throwaway home:
//! versions, errors and every known route answering something other than 404.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::networks::Networks;
use crate::paths::Paths;
use crate::services::Services;
use crate::store::StateStore;

fn services(dir: &std::path::Path) -> Arc<Services> {
    let paths = Paths::new(dir);
    let store = Arc::new(StateStore::open(&paths.state_db()).unwrap());
    let nets = Networks::user_mode(dir, store.clone(), "test");
    Services::new(
        paths,
        store,
        Arc::new(Notify::new()),
        dir.join("accel.json"),
        nets,
    )
}

async fn call(
    svc: &Arc<Services>,
    method: &str,
    path: &str,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let app = super::app(svc.clone());
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn ping_versions_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let svc = services(dir.path());
    let (st, h, body) = call(&svc, "GET", "/_ping").await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "OK"));
    assert_eq!(h["api-version"], super::API_VERSION);
    assert_eq!(h["ostype"], "linux");
    let (st, h, _) = call(&svc, "HEAD", "/v1.41/_ping").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h["api-version"], super::API_VERSION);
    let (st, _, body) = call(&svc, "GET", "/v1.24/version").await;
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ApiVersion"], super::API_VERSION);
    assert_eq!(v["MinAPIVersion"], super::MIN_API_VERSION);
    let (st, _, body) = call(&svc, "GET", "/v1.99/version").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("client version 1.99 is too new"), "{body}");
    let (st, _, body) = call(&svc, "GET", "/v1.12/info").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("too old"), "{body}");
}

#[tokio::test]
async fn errors_in_dockers_shape() {
    let dir = tempfile::tempdir().unwrap();
    let svc = services(dir.path());
    let (st, _, body) = call(&svc, "GET", "/v1.47/containers/nope/json").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(body, r#"{"message":"No such container: nope"}"#);
    let (st, _, body) = call(&svc, "GET", "/images/busybox:latest/json").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body.contains("No such image: busybox:latest"), "{body}");
    let (st, _, body) = call(&svc, "GET", "/swarm").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("This node is not a swarm manager"), "{body}");
    let (st, _, body) = call(&svc, "GET", "/no/such/route").await;
    assert_eq!(
        (st, body.as_str()),
        (StatusCode::NOT_FOUND, r#"{"message":"page not found"}"#)
    );
    let (st, _, body) = call(&svc, "GET", "/plugins").await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "[]"));
}

#[tokio::test]
async fn known_routes_never_answer_404_for_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let svc = services(dir.path());
    let routes = [
        ("GET", "/info"),
        ("GET", "/system/df"),
        ("GET", "/containers/json?all=1"),
        ("GET", "/images/json"),
        ("GET", "/networks"),
        ("GET", "/volumes"),
        ("POST", "/containers/prune"),
        ("POST", "/images/prune"),
        ("POST", "/volumes/prune"),
        ("POST", "/networks/prune"),
        ("GET", "/nodes"),
        ("GET", "/services"),
        ("GET", "/secrets"),
        ("GET", "/configs"),
        ("GET", "/tasks"),
        ("POST", "/build"),
        ("GET", "/images/search?term=x"),
    ];
    for (m, p) in routes {
        let (st, _, body) = call(&svc, m, p).await;
        assert_ne!(st, StatusCode::NOT_FOUND, "{m} {p}: {body}");
        assert_ne!(st, StatusCode::METHOD_NOT_ALLOWED, "{m} {p}: {body}");
        assert!(
            !st.is_server_error()
                || st == StatusCode::SERVICE_UNAVAILABLE
                || st == StatusCode::NOT_IMPLEMENTED,
            "{m} {p}: {st} {body}"
        );
    }
    let (_, _, body) = call(&svc, "GET", "/networks").await;
    let nets: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = nets
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"host") && names.contains(&"none"),
        "{names:?}"
    );
}
