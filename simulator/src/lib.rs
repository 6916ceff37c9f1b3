//! A OneRoster simulator imitating a ClassLink Roster Server for one synthetic district: the
//! same data served as OneRoster 1.1 (at [`BASE_PATH`], ClassLink's wire format) and as
//! OneRoster 1.2 Rostering (at [`BASE_PATH_V1P2`]).
//!
//! Used in-process by the main crate's tests ([`spawn`] on port 0), and as the `oneroster-sim`
//! binary by the README demo and the benchmarks. It is a test tool: credentials are test values
//! and the control API (`/__sim/...`) answers loopback clients only.

mod auth;
mod faults;
mod generate;
mod model;
mod scenario;
mod server;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use auth::{Credentials, pct, signature_base_string};
pub use faults::{Faults, Stats};
pub use generate::{Counts, Tier, generate};
pub use model::{
    AcademicSession, Class, Collection, Course, Dataset, Demographics, Enrollment, Fields, Org,
    Periods, ProfileCredential, Record, RoleAssignment, Status, Text, User, UserId, UserProfile,
    v1p1_role, v1p2_role,
};
pub use scenario::{ChangeLog, CollectionChanges, Scenario};
pub use server::{BASE_PATH, BASE_PATH_V1P2, HREF_BASE, HREF_BASE_V1P2};
pub use wire::format_timestamp;

/// How to build and run a simulated district.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub counts: Counts,
    pub credentials: Credentials,
    /// Lifetime of tokens issued by the OAuth2 token endpoint.
    pub token_ttl: Duration,
    /// Most records per page the server honours (ClassLink's real cap is 10,000).
    pub page_cap: Option<usize>,
    /// Over the cap: `true` returns a short page silently (the field failure mode), `false`
    /// answers 400.
    pub clamp_silently: bool,
    /// Users on the 1.1 wire also carry the 1.2 `roles[]` array (next to `role` and `orgs`), as
    /// some ClassLink districts send it. The 1.2 wire always has it.
    pub v1p1_roles: bool,
}

impl SimConfig {
    pub fn new(seed: u64, counts: Counts) -> SimConfig {
        SimConfig {
            seed,
            counts,
            credentials: Credentials::default(),
            token_ttl: Duration::from_secs(3600),
            page_cap: None,
            clamp_silently: false,
            v1p1_roles: false,
        }
    }
}

/// A running simulator. Cheap to clone; all clones control the same server.
#[derive(Clone)]
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// Generates the district and serves it on 127.0.0.1 with an OS-chosen port.
pub async fn spawn(cfg: SimConfig) -> anyhow::Result<SimHandle> {
    spawn_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Generates the district and serves it on `addr`, in a tokio task.
pub async fn spawn_on(cfg: SimConfig, addr: SocketAddr) -> anyhow::Result<SimHandle> {
    let (seed, counts) = (cfg.seed, cfg.counts.clone());
    // Generation of a large district takes seconds; keep it off the async workers.
    let dataset = tokio::task::spawn_blocking(move || generate(seed, &counts)).await?;
    let shared = Arc::new(server::Shared::new(cfg, dataset));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = server::router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stop_rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "simulator server stopped");
        }
    });
    Ok(SimHandle {
        addr,
        shared,
        stop: Arc::new(Mutex::new(Some(stop_tx))),
        task: Arc::new(Mutex::new(Some(task))),
    })
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/ims/oneroster/v1p1`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.addr, BASE_PATH)
    }

    /// `http://127.0.0.1:PORT/ims/oneroster/rostering/v1p2`, no trailing slash.
    pub fn base_url_v1p2(&self) -> String {
        format!("http://{}{}", self.addr, BASE_PATH_V1P2)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    pub fn credentials(&self) -> Credentials {
        self.shared.config.credentials.clone()
    }

    /// Reads or changes the live data set. Afterwards collections are re-sorted and the
    /// revision (`x-perm-rev`) moves on, whether or not anything changed.
    pub fn with_data<R>(&self, f: impl FnOnce(&mut Dataset) -> R) -> R {
        let mut state = self.shared.write();
        let result = f(&mut state.dataset);
        state.dataset.sort();
        state.revision += 1;
        result
    }

    /// Reads the live data set without changing it (no revision bump, no copy).
    pub fn read<R>(&self, f: impl FnOnce(&Dataset) -> R) -> R {
        f(&self.shared.read().dataset)
    }

    /// A copy of the current data set.
    pub fn snapshot(&self) -> Dataset {
        self.shared.read().dataset.clone()
    }

    /// The `x-perm-rev` value the server currently sends.
    pub fn revision(&self) -> String {
        let state = self.shared.read();
        self.shared.revision_string(&state)
    }

    pub fn apply(&self, scenario: Scenario) -> ChangeLog {
        self.shared.apply(&scenario)
    }

    /// Replaces the active faults and restarts their counters.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// Changes the page cap at run time (the fault `page_cap` still takes precedence).
    pub fn set_page_cap(&self, cap: Option<usize>) {
        self.shared.control().page_cap = cap;
    }

    pub fn stats(&self) -> Stats {
        self.shared.control().stats.clone()
    }

    pub fn reset_stats(&self) {
        self.shared.control().stats = Stats::default();
    }

    /// Stops serving and waits for the server task. Other clones stop working too.
    pub async fn shutdown(self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
