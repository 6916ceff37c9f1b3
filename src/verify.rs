//! The drift check (`verify`): the roster store against what the daemon last applied (the
//! mirror). Someone else's writes to `roster.*` show up as rows *changed* (their stored form no
//! longer hashes to the mirror's), *missing* (the mirror has them, the store not) or *added*
//! (the store has rows the daemon never wrote). The check writes nothing; a repair marks the
//! drifted rows in the mirror so that the next run, a full pull, rewrites them from the source
//! (counted as changes and judged by the safety limits like any other).
//!
//! It hashes each store row as `COPY` prints it, which is byte for byte the line the `stored`
//! module hashes when a run writes the row (see there).

use std::collections::{BTreeMap, HashMap};

use foldhash::fast::FixedState;
use serde::Serialize;
use sqlx::Connection;

use crate::db::{Databases, DbError};
use crate::diff::{self, HASH_VERSION, Key};
use crate::domain::Entity;
use crate::history::{self, HistoryError};
use crate::mirror::{self, MirrorError};
use crate::store::{self, StoreError};
use crate::stored::unescape;

/// Sample ids per entity and kind of drift.
const SAMPLES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// One entity's drift.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EntityDrift {
    pub changed: u64,
    pub missing: u64,
    pub added: u64,
    /// Up to [`SAMPLES`] ids of each kind, in `sourcedId` order.
    pub samples: BTreeMap<&'static str, Vec<String>>,
    /// Every drifted id, its kind and the status the store holds (`None`: not in the store),
    /// for a repair.
    #[serde(skip)]
    ids: Vec<(String, &'static str, Option<String>)>,
}

impl EntityDrift {
    pub fn total(&self) -> u64 {
        self.changed + self.missing + self.added
    }

    fn add(&mut self, kind: &'static str, id: String, store_status: Option<String>) {
        match kind {
            "changed" => self.changed += 1,
            "missing" => self.missing += 1,
            _ => self.added += 1,
        }
        self.ids.push((id, kind, store_status));
    }

    /// Sorts the ids and takes the samples.
    fn finish(&mut self) {
        self.ids.sort();
        for (id, kind, _) in &self.ids {
            let samples = self.samples.entry(kind).or_default();
            if samples.len() < SAMPLES {
                samples.push(id.clone());
            }
        }
    }

    /// The drifted ids and the status the mirror should take for each (the store's; the
    /// mirror's own for a row the store lacks).
    pub fn repairs(&self) -> Vec<(&str, Option<&str>)> {
        self.ids
            .iter()
            .map(|(id, _, status)| (id.as_str(), status.as_deref()))
            .collect()
    }
}

/// The drift of one district.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub district: String,
    pub entities: BTreeMap<Entity, EntityDrift>,
    /// The mirror's hashes are of another row-hash version: only statuses could be compared.
    pub statuses_only: bool,
}

impl Drift {
    pub fn total(&self) -> u64 {
        self.entities.values().map(EntityDrift::total).sum()
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.entities
            .values()
            .map(|d| match kind {
                "changed" => d.changed,
                "missing" => d.missing,
                _ => d.added,
            })
            .sum()
    }
}

struct MirrorEntry {
    id: String,
    active: bool,
    hash: Option<i64>,
    seen: bool,
}

/// Compares the district's roster store with its mirror; writes nothing.
pub async fn check(dbs: &Databases, district: &str) -> Result<Drift, VerifyError> {
    let state = history::district_state(&dbs.state, district).await?;
    let trusted = state.hash_version == Some(HASH_VERSION);
    let mut session = dbs.state_session().await?;
    let mut store_session = if dbs.store_is_separate {
        Some(dbs.store_session().await?)
    } else {
        None
    };
    let mut drift = Drift {
        district: district.to_owned(),
        statuses_only: !trusted,
        ..Drift::default()
    };
    for entity in Entity::ALL {
        let mut mirrored: HashMap<Key, MirrorEntry, FixedState> = HashMap::default();
        mirror::rows(&mut session, district, entity, |id, active, hash| {
            mirrored.insert(
                diff::key(&id),
                MirrorEntry {
                    id,
                    active,
                    hash: hash.filter(|_| trusted),
                    seen: false,
                },
            );
        })
        .await?;
        let mut found = EntityDrift::default();
        let conn = match store_session.as_mut() {
            Some(s) => s,
            None => &mut session,
        };
        store::rows(conn, district, entity, |line| {
            let mut fields = line.splitn(3, |b| *b == b'\t');
            let id = unescape(fields.next().unwrap_or_default());
            let status = unescape(fields.next().unwrap_or_default());
            match mirrored.get_mut(&diff::key(&id)) {
                None => found.add("added", id, Some(status)),
                Some(m) => {
                    m.seen = true;
                    let same = match m.hash {
                        Some(h) => h == diff::row_hash(line),
                        // Content unknown (deleted by absence) or not comparable: the status.
                        None => (status == "active") == m.active,
                    };
                    if !same {
                        found.add("changed", id, Some(status));
                    }
                }
            }
        })
        .await?;
        for m in mirrored.into_values().filter(|m| !m.seen) {
            found.add("missing", m.id, None);
        }
        found.finish();
        drift.entities.insert(entity, found);
    }
    let _ = session.close().await;
    if let Some(s) = store_session {
        let _ = s.close().await;
    }
    Ok(drift)
}

/// Marks every drifted row in the mirror and asks the district's next run to pull everything:
/// that run rewrites the rows from the source. Returns the rows marked.
pub async fn repair(dbs: &Databases, drift: &Drift) -> Result<u64, VerifyError> {
    let mut marked = 0;
    let mut conn = dbs.state_session().await?;
    for (entity, d) in &drift.entities {
        marked += mirror::mark_drifted(&mut conn, &drift.district, *entity, &d.repairs()).await?;
    }
    history::request_full_pull(&dbs.state, &drift.district).await?;
    let _ = conn.close().await;
    Ok(marked)
}
