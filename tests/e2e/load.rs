//! Bounded load on the API, loopback only: 10 containers created and started
//! concurrently through apexd, then 1,000 `ls`/`inspect` requests from concurrent
//! clients. Prints latency percentiles; fails if any request fails.

use std::time::{Duration, Instant};

use apex_e2e::env::BusyboxEnv;
use apexd::client::Client;
use apexd::model::{ContainerRecord, ContainerSummary, CreateRequest, Created};

const CONTAINERS: usize = 10;
const REQUESTS: usize = 1000;
const CLIENTS: usize = 16;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn ten_containers_then_a_thousand_requests() {
    let e = BusyboxEnv::new();
    e.home.run(&["system", "start"]).assert_ok();
    let client = Client::new(e.path().join("run/apex.sock"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 10 containers at once: create + start, each through the API.
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..CONTAINERS {
            let (c, image) = (client.clone(), e.image.clone());
            tasks.push(tokio::spawn(async move {
                let req = CreateRequest {
                    image,
                    name: Some(format!("load{i}")),
                    command: vec!["sleep".into(), "600".into()],
                    memory_mib: Some(128),
                    ..Default::default()
                };
                let created: Created = c.post_json("/v1/containers", &req).await?;
                let rec: ContainerRecord = c
                    .post(&format!("/v1/containers/{}/start", created.id))
                    .await?;
                Ok::<_, apexd::client::ClientError>(rec)
            }));
        }
        for t in tasks {
            let rec = t.await.unwrap().expect("create + start");
            assert_eq!(rec.state, apexd::model::ContainerState::Running);
        }
        let started = t0.elapsed();
        let running: Vec<ContainerSummary> = client.get("/v1/containers").await.unwrap();
        assert_eq!(running.len(), CONTAINERS, "{running:?}");
        // Every guest answers (booted, not just spawned).
        for r in &running {
            let st: apex_shim_stats::Stats = client
                .get(&format!("/v1/containers/{}/stats", r.id))
                .await
                .expect("stats from every guest");
            assert!(st.memory_usage_bytes > 0);
        }
        let booted = t0.elapsed();

        // 1,000 requests from concurrent clients, half `ls -a`, half `inspect`.
        let t1 = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..CLIENTS {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut failures = Vec::new();
                for n in (w..REQUESTS).step_by(CLIENTS) {
                    let t = Instant::now();
                    let ok = if n % 2 == 0 {
                        c.get::<Vec<ContainerSummary>>("/v1/containers?all=true")
                            .await
                            .map(|l| l.len() == CONTAINERS)
                    } else {
                        c.get::<ContainerRecord>(&format!("/v1/containers/load{}", n % CONTAINERS))
                            .await
                            .map(|r| r.name == format!("load{}", n % CONTAINERS))
                    };
                    lat.push(t.elapsed());
                    match ok {
                        Ok(true) => {}
                        Ok(false) => failures.push(format!("request {n}: wrong answer")),
                        Err(e) => failures.push(format!("request {n}: {e}")),
                    }
                }
                (lat, failures)
            }));
        }
        let mut lat = Vec::new();
        let mut failures = Vec::new();
        for t in tasks {
            let (l, f) = t.await.unwrap();
            lat.extend(l);
            failures.extend(f);
        }
        let wall = t1.elapsed();
        lat.sort();
        assert_eq!(lat.len(), REQUESTS);
        assert!(failures.is_empty(), "{} failed: {failures:?}", failures.len());
        println!(
            "load: {CONTAINERS} containers created+started in {:.2}s (all guests answering after {:.2}s)",
            started.as_secs_f64(),
            booted.as_secs_f64()
        );
        println!(
            "load: {REQUESTS} ls/inspect requests from {CLIENTS} clients in {:.2}s ({:.0} req/s), 0 failed; latency p50 {:.1}ms p90 {:.1}ms p99 {:.1}ms max {:.1}ms",
            wall.as_secs_f64(),
            REQUESTS as f64 / wall.as_secs_f64(),
            percentile(&lat, 0.50).as_secs_f64() * 1e3,
            percentile(&lat, 0.90).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3,
        );

        // Tear down concurrently as well.
        let mut tasks = Vec::new();
        for i in 0..CONTAINERS {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                c.delete::<apexd::api::Message>(&format!("/v1/containers/load{i}?force=true"))
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().expect("rm -f");
        }
        let left: Vec<ContainerSummary> = client.get("/v1/containers?all=true").await.unwrap();
        assert!(left.is_empty(), "{left:?}");
    });
}

/// The stats type, as served (kept local so this test names what it checks).
mod apex_shim_stats {
    #[derive(serde::Deserialize)]
    pub struct Stats {
        pub memory_usage_bytes: u64,
    }
}
