//! The health and metrics listener in-process, on a listener the test binds to port 0, with
//! readiness kept by the background database check.

use std::time::{Duration, Instant};

use oneroster_sim::Counts;
use oneroster_sync::health::{self, Monitor};
use tokio_util::sync::CancellationToken;

use crate::support::Harness;

pub async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn probes_and_metrics_answer_on_a_bound_listener() {
    let h = Harness::new(Counts::tiny()).await;
    let listener = health::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let monitor = Monitor::new();
    let stop = CancellationToken::new();
    let task = health::serve(listener, monitor.clone(), stop.clone());

    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
    // Neither the database check nor the scheduler loop has run yet: not ready.
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.0 503"));
    let watcher = tokio::spawn(health::watch_database(
        h.dbs.clone(),
        monitor.clone(),
        stop.clone(),
    ));
    monitor.tick();
    let started = Instant::now();
    while !monitor.database_up() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the check never succeeded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = get(addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
    assert_eq!(
        health::probe_ready(addr, Duration::from_secs(2))
            .await
            .unwrap(),
        200
    );
    let metrics = get(addr, "/metrics").await;
    assert!(
        metrics.contains("# TYPE oneroster_sync_runs_total counter"),
        "{metrics}"
    );

    stop.cancel();
    for handle in [task, watcher] {
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("stops on cancel")
            .unwrap();
    }
}
