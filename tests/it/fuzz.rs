//! Property tests of the wire boundary: the page parser (`oneroster::read_page`), the
//! normalizers and the stored form (`stored::encode`), fed arbitrary JSON, cut and mutated real
//! pages, deep nesting, huge strings and numbers, invalid UTF-8 and odd JSON types in every
//! field of every record type.
//!
//! Whatever the body, reading it must not panic, must hold at most a bounded multiple of its
//! size, and must come to a page exactly when serde_json's own grammar sees one, or to an error
//! that says what is wrong and whether the body ended early; every record is read, or skipped by
//! its id with a finding that names the field; and no value planted in a field shows in an error
//! (messages name fields, never values). The seed is fixed so CI runs the same cases;
//! `PROPTEST_RNG_SEED=<n>` and `PROPTEST_CASES=<n>` explore further. The cargo-fuzz target in
//! `fuzz/` runs the same parser without bounds.

use std::fmt::Debug;
use std::sync::OnceLock;

use oneroster_sim::{Counts, SimConfig};
use oneroster_sync::domain::{self, Code, Finding, MISSING_ID, Severity};
use oneroster_sync::normalize::{
    self, CLASS_TYPES, ENROLLMENT_ROLES, Normalized, ORG_TYPES, SESSION_TYPES, USER_ROLES,
};
use oneroster_sync::oneroster::{PageError, WireRecord, read_page, wire};
use oneroster_sync::stored::{self, Stored};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::RngSeed;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Values planted in fields the daemon reads: never in an error detail or a finding's message.
const PLANTED: [&str; 2] = ["Zq7planted", "739184620511"];
/// Values planted in fields the daemon never holds (birth dates, passwords, metadata): nowhere
/// in what it keeps, nor in any message.
const HIDDEN: [&str; 2] = ["Zq7hidden", "902846135577"];
/// The longest error detail or finding message that still reads as one clear sentence.
const MESSAGE_MAX: usize = 256;

fn config(cases: u32) -> ProptestConfig {
    // The defaults carry the PROPTEST_* environment; without it the seed is fixed.
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        rng_seed: match base.rng_seed {
            RngSeed::Random => RngSeed::Fixed(0x0e1e_5eed),
            fixed => fixed,
        },
        // A failure prints its minimal input; nothing is written next to the sources.
        failure_persistence: None,
        max_shrink_time: 60_000,
        ..base
    }
}

// ---- memory ----------------------------------------------------------------------------------

/// Counts the bytes each thread holds, so a check can measure the peak of one call. It wraps the
/// system allocator for the whole test binary; the counters are thread-locals without
/// destructors, so counting never allocates.
mod meter {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Metered;

    thread_local! {
        static HELD: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn count(delta: isize) {
        let _ = HELD.try_with(|held| {
            let now = held.get() + delta;
            held.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    unsafe impl GlobalAlloc for Metered {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let ptr = unsafe { System.alloc(layout) };
            if !ptr.is_null() {
                count(layout.size() as isize);
            }
            ptr
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let ptr = unsafe { System.alloc_zeroed(layout) };
            if !ptr.is_null() {
                count(layout.size() as isize);
            }
            ptr
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            count(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let new = unsafe { System.realloc(ptr, layout, new_size) };
            if !new.is_null() {
                count(new_size as isize - layout.size() as isize);
            }
            new
        }
    }

    /// Runs `f`: its result, and the most bytes this thread held at once during the call
    /// beyond what it held before.
    pub fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let start = HELD.with(Cell::get);
        PEAK.with(|peak| peak.set(start));
        let out = f();
        let peak = PEAK.with(Cell::get);
        (out, (peak - start).max(0) as usize)
    }
}

#[global_allocator]
static ALLOCATOR: meter::Metered = meter::Metered;

/// The most bytes reading a body of `len` bytes (or normalizing its records) may hold at once,
/// `record` being the size of one record's struct. A record takes at least two bytes of the body
/// (`1` and a comma) and costs its struct (the page's vector has room for every record, read or
/// not) plus its share of the raw records' vector and a finding; the text held is at most
/// `TEXT_PER_BYTE` times the body, because a number read as text is written out in full (the six
/// bytes of `5e-324` become 326 characters).
fn bound(len: usize, record: usize) -> usize {
    const TEXT_PER_BYTE: usize = 64;
    (len / 2 + 1) * (record + 256) + TEXT_PER_BYTE * len + (64 << 10)
}

/// A real page's bound: its records, their text and their stored form take about the body's
/// size (its hrefs and metadata are not kept).
fn realistic_bound(len: usize) -> usize {
    2 * len + (8 << 10)
}

// ---- the seven collections -------------------------------------------------------------------

/// A wire type with its normalizer and, for the roster tables, its stored form.
trait Wire: WireRecord + Debug {
    type Record: Debug;
    fn normalize(self) -> Normalized<Self::Record>;
    /// The record's COPY line and the number of columns after its `sourced_id`; `None` for
    /// demographics, which is stored as part of its user.
    fn line(record: &Self::Record) -> Option<(Vec<u8>, usize)>;
    /// The id the normalizer's warnings about the record carry.
    fn id(record: &Self::Record) -> &str;
}

fn copy_line<R: Stored>(record: &R) -> Option<(Vec<u8>, usize)> {
    let mut line = Vec::new();
    stored::encode(record, &mut line);
    Some((line, stored::columns(R::ENTITY).len()))
}

macro_rules! stored_wire {
    ($($name:ident => $normalize:ident;)*) => {$(
        impl Wire for wire::$name {
            type Record = domain::$name;
            fn normalize(self) -> Normalized<domain::$name> {
                normalize::$normalize(self)
            }
            fn line(record: &domain::$name) -> Option<(Vec<u8>, usize)> {
                copy_line(record)
            }
            fn id(record: &domain::$name) -> &str {
                &record.sourced_id
            }
        }
    )*};
}

stored_wire! {
    Org => org;
    AcademicSession => academic_session;
    Course => course;
    Class => class;
    User => user;
    Enrollment => enrollment;
}

impl Wire for wire::Demographics {
    type Record = domain::Demographics;
    fn normalize(self) -> Normalized<domain::Demographics> {
        normalize::demographics(self)
    }
    fn line(_: &domain::Demographics) -> Option<(Vec<u8>, usize)> {
        None
    }
    fn id(record: &domain::Demographics) -> &str {
        &record.user_sourced_id
    }
}

/// What a field holds on the wire, for generating plausible values.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Id,
    Status,
    Timestamp,
    Date,
    Text,
    Vocab(&'static [&'static str]),
    Flag,
    Ref,
    Refs,
    List,
    Roles,
    UserIds,
    Sex,
}

struct Collection {
    /// The envelope key (the collection's path).
    key: &'static str,
    /// The fields the wire type reads.
    fields: &'static [(&'static str, Shape)],
    /// OneRoster fields of the record that the wire type leaves out.
    left_out: &'static [&'static str],
    read: fn(&[u8]) -> Result<Read, PageError>,
}

use Shape::*;

static COLLECTIONS: [Collection; 7] = [
    Collection {
        key: "orgs",
        fields: &[
            ("sourcedId", Id),
            ("status", Status),
            ("dateLastModified", Timestamp),
            ("name", Text),
            ("type", Vocab(ORG_TYPES)),
            ("identifier", Text),
            ("parent", Ref),
        ],
        left_out: &["metadata", "children"],
        read: read::<wire::Org>,
    },
    Collection {
        key: "academicSessions",
        fields: &[
            ("sourcedId", Id),
            ("status", Status),
            ("dateLastModified", Timestamp),
            ("title", Text),
            ("type", Vocab(SESSION_TYPES)),
            ("startDate", Date),
            ("endDate", Date),
            ("parent", Ref),
            ("schoolYear", Text),
        ],
        left_out: &["metadata", "children"],
        read: read::<wire::AcademicSession>,
    },
    Collection {
        key: "courses",
        fields: &[
            ("sourcedId", Id),
            ("status", Status),
            ("dateLastModified", Timestamp),
            ("title", Text),
            ("courseCode", Text),
            ("org", Ref),
        ],
        left_out: &[
            "metadata",
            "schoolYear",
            "grades",
            "subjects",
            "subjectCodes",
            "resources",
        ],
        read: read::<wire::Course>,
    },
    Collection {
        key: "classes",
        fields: &[
            ("sourcedId", Id),
            ("status", Status),
            ("dateLastModified", Timestamp),
            ("title", Text),
            ("classCode", Text),
            ("classType", Vocab(CLASS_TYPES)),
            ("school", Ref),
            ("course", Ref),
            ("terms", Refs),
            ("grades", List),
            ("subjects", List),
            ("periods", List),
        ],
        left_out: &["metadata", "location", "subjectCodes", "resources"],
        read: read::<wire::Class>,
    },
    Collection {
        key: "users",
        fields: &[
            ("sourcedId", Id),
            ("status", Status),
            ("dateLastModified", Timestamp),
            ("username", Text),
            ("enabledUser", Flag),
            ("givenName", Text),
            ("familyName", Text),
            ("middleName", Text),
            ("preferredFirstName", Text),
            ("preferredMiddleName", Text),
            ("preferredLastName", Text),
            ("pronouns", Text),
            ("role", Vocab(USER_ROLES)),
            ("roles", Roles),
            ("primaryOrg", Ref),
            ("userIds", UserIds),
            ("identifier", Text),
            ("email", Text),
            ("orgs", Refs),
            ("grades", List),
        ],
        left_out: &["metadata", "password", "phone", "sms", "agents"],
        read: read::<wire::User>,
    },
    Collection {
        key: "enrollments",
        fields: &[
            ("sourcedId", Id),
            ("status", Status),
            ("dateLastModified", Timestamp),
            ("user", Ref),
            ("class", Ref),
            ("school", Ref),
            ("role", Vocab(ENROLLMENT_ROLES)),
            ("primary", Flag),
            ("beginDate", Date),
            ("endDate", Date),
        ],
        left_out: &["metadata"],
        read: read::<wire::Enrollment>,
    },
    Collection {
        key: "demographics",
        fields: &[
            ("sourcedId", Id),
            ("status", Status),
            ("dateLastModified", Timestamp),
            ("sex", Sex),
            ("americanIndianOrAlaskaNative", Flag),
            ("asian", Flag),
            ("blackOrAfricanAmerican", Flag),
            ("nativeHawaiianOrOtherPacificIslander", Flag),
            ("white", Flag),
            ("demographicRaceTwoOrMoreRaces", Flag),
            ("hispanicOrLatinoEthnicity", Flag),
        ],
        left_out: &[
            "metadata",
            "birthDate",
            "cityOfBirth",
            "countryOfBirthCode",
            "stateOfBirthAbbreviation",
            "publicSchoolResidenceStatus",
        ],
        read: read::<wire::Demographics>,
    },
];

// ---- the checks every body must pass ---------------------------------------------------------

/// What a body came to under one wire type, once every invariant held.
#[derive(Debug)]
struct Read {
    /// Readable records.
    records: usize,
    /// One finding per unreadable record.
    unreadable: Vec<Finding>,
    /// The normalizers' errors (records skipped) and warnings.
    findings: Vec<Finding>,
    /// The most bytes reading the page, or normalizing and encoding its records, held at once.
    peak: usize,
    /// All that the daemon keeps of the page as text: the wire records, the domain records,
    /// their COPY lines and the findings' ids.
    kept: String,
}

/// Reads `body` as a page of `W`, normalizes and encodes every record, and checks the
/// invariants of the wire boundary (see the module comment).
fn read<W: Wire>(body: &[u8]) -> Result<Read, PageError> {
    let entity = W::ENDPOINT.name;
    let expected = page_len(body, W::ENDPOINT.envelope_key());
    let (page, read_peak) = meter::peak(|| read_page::<W>(body));
    assert!(
        read_peak <= bound(body.len(), size_of::<W>()),
        "{entity}: reading {} bytes held {read_peak} bytes",
        body.len()
    );
    let (records, unreadable) = match page {
        Err(e) => {
            assert_eq!(expected, None, "{entity}: a page read as an error: {e}");
            assert!(
                !e.detail.trim().is_empty(),
                "{entity}: an error without detail"
            );
            assert!(e.detail.len() <= MESSAGE_MAX, "{entity}: {}", e.detail);
            clean(&e.detail);
            // Only a body that ends early is worth a retry, and such a body is not a page by
            // serde_json's own grammar either; invalid UTF-8 before the end stops it sooner.
            let ends_early = ends_early(body);
            if std::str::from_utf8(body).is_ok() {
                assert_eq!(e.retryable, ends_early, "{entity}: {e}");
            } else {
                assert!(!e.retryable || ends_early, "{entity}: {e}");
            }
            return Err(e);
        }
        Ok(page) => page,
    };
    assert_eq!(
        Some(records.len() + unreadable.len()),
        expected,
        "{entity}: every record of the page is read or reported"
    );
    for f in &unreadable {
        finding(f, Severity::Error, entity);
        assert_eq!(f.code, Code::RecordUnreadable, "{entity}: {f:?}");
        assert!(
            f.message.starts_with("field `") || f.message.starts_with("record: "),
            "{entity}: an unreadable record's message names the field: {f:?}"
        );
    }
    let mut kept = format!("{records:?}\n");
    let count = records.len();
    let (normalized, normalize_peak) = meter::peak(|| {
        records
            .into_iter()
            .map(|r| {
                W::normalize(r).map(|(record, warnings)| {
                    let line = W::line(&record);
                    (record, warnings, line)
                })
            })
            .collect::<Vec<_>>()
    });
    // Each domain record, its result and its COPY line are made while the wire records are
    // still held.
    assert!(
        normalize_peak <= bound(body.len(), 2 * size_of::<W>()),
        "{entity}: normalizing {count} records of a {} byte page held {normalize_peak} bytes",
        body.len()
    );
    let mut findings = Vec::new();
    for result in normalized {
        match result {
            Ok((record, warnings, line)) => {
                for w in &warnings {
                    finding(w, Severity::Warning, entity);
                    assert_eq!(w.sourced_id, W::id(&record), "{entity}: {w:?}");
                }
                if let Some((line, columns)) = line {
                    copy_line_is_one_row(&line, columns, W::id(&record));
                    kept.push_str(&String::from_utf8_lossy(&line));
                }
                kept.push_str(&format!("\n{record:?}\n"));
                findings.extend(warnings);
            }
            Err(f) => {
                finding(&f, Severity::Error, entity);
                if f.code == Code::SourcedIdMissing {
                    assert_eq!(f.sourced_id, MISSING_ID);
                }
                findings.push(f);
            }
        }
    }
    for f in unreadable.iter().chain(&findings) {
        kept.push_str(&f.sourced_id);
        kept.push('\n');
    }
    Ok(Read {
        records: count,
        unreadable,
        findings,
        peak: read_peak.max(normalize_peak),
        kept,
    })
}

/// Reads `body` under every collection's wire type (a bare array is a page of any of them).
fn read_all(body: &[u8]) {
    for c in &COLLECTIONS {
        let _ = (c.read)(body);
    }
}

/// Reads a generated page of collection `i` under every wire type; under its own, nothing of
/// its left-out fields is kept.
fn read_generated(i: usize, body: &[u8]) {
    read_all(body);
    if let Ok(read) = (COLLECTIONS[i].read)(body) {
        keeps_nothing_hidden(&read);
    }
}

/// Nothing of a value planted in a field the daemon leaves out is kept (checked where the
/// body was built so; an edited body may have moved it into a field the daemon reads).
fn keeps_nothing_hidden(read: &Read) {
    for value in HIDDEN {
        assert!(
            !read.kept.contains(value),
            "a field the daemon never holds was kept"
        );
    }
}

fn finding(f: &Finding, severity: Severity, entity: &str) {
    assert!(Code::ALL.contains(&f.code), "{f:?}");
    assert_eq!(
        (f.severity, f.code.severity()),
        (severity, severity),
        "{f:?}"
    );
    assert_eq!(f.entity, entity, "{f:?}");
    assert!(!f.sourced_id.is_empty(), "{f:?}");
    assert!(
        !f.message.trim().is_empty() && f.message.len() <= MESSAGE_MAX,
        "{f:?}"
    );
    clean(&f.message);
}

/// A message the daemon logs: never a planted value.
fn clean(message: &str) {
    for value in PLANTED.iter().chain(&HIDDEN) {
        assert!(
            !message.contains(value),
            "a value planted in a field shows in {message:?}"
        );
    }
}

/// A COPY line is one row: a tab before each column, no raw line break or NUL, and its first
/// field decodes to the record's id.
fn copy_line_is_one_row(line: &[u8], columns: usize, id: &str) {
    assert_eq!(
        line.iter().filter(|b| **b == b'\t').count(),
        columns,
        "a tab in a value is escaped"
    );
    assert!(
        !line.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)),
        "line breaks are escaped and NULs dropped"
    );
    let first = line.split(|b| *b == b'\t').next().unwrap_or_default();
    assert_eq!(stored::unescape(first), id);
}

/// Whether a body is JSON cut short: serde_json reaches its end still inside a value (an
/// early end, or a number cut after its sign, point or exponent: a syntax error at the last
/// byte to serde_json).
fn ends_early(body: &[u8]) -> bool {
    let Err(e) = serde_json::from_slice::<IgnoredAny>(body) else {
        return false;
    };
    if e.is_eof() {
        return true;
    }
    if !e.is_syntax() {
        return false;
    }
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_end();
    if !trimmed.ends_with(['-', '+', '.', 'e', 'E']) {
        return false;
    }
    let lines: Vec<&str> = trimmed.split('\n').collect();
    // The error is on the last line, at its last byte or past it.
    e.line() == lines.len() && e.column() >= lines.last().map_or(0, |l| l.len())
}

/// How many records `body` holds as a page with envelope `key`, by serde_json's own grammar
/// and none of the parser's code: a bare array, or an object whose last `key` member is an
/// array. `None`: it is no page (JSON text is UTF-8 throughout).
fn page_len(body: &[u8], key: &str) -> Option<usize> {
    std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let len = Items {
        envelope: Some(key),
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    len
}

/// Counts an array's items; an object is an envelope when `envelope` is set.
struct Items<'k> {
    envelope: Option<&'k str>,
}

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Some(n))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut len = None;
        while let Some(name) = map.next_key::<String>()? {
            match self.envelope {
                Some(key) if name == key => len = map.next_value_seed(Items { envelope: None })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(len.filter(|_| self.envelope.is_some()))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

// ---- real pages ------------------------------------------------------------------------------

/// One page of every collection as the simulator serves it (seed 7, a tiny district), fetched
/// once for the whole file.
fn sim_pages() -> &'static [(&'static Collection, Vec<u8>)] {
    static PAGES: OnceLock<Vec<(&'static Collection, Vec<u8>)>> = OnceLock::new();
    PAGES.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(async {
            let sim = oneroster_sim::spawn(SimConfig::new(7, Counts::tiny()))
                .await
                .expect("start the simulator");
            let token = sim.credentials().bearer_token;
            let http = reqwest::Client::builder()
                .tls_backend_rustls()
                .build()
                .expect("HTTP client");
            let mut pages = Vec::new();
            for c in &COLLECTIONS {
                let url = format!("{}/{}?limit=50&offset=0", sim.base_url(), c.key);
                let response = http
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("GET a page");
                assert!(
                    response.status().is_success(),
                    "{url}: {}",
                    response.status()
                );
                let body = response.bytes().await.expect("page body");
                pages.push((c, body.to_vec()));
            }
            sim.shutdown().await;
            pages
        })
    })
}

/// The records of a real page, in order.
fn records_of(body: &[u8], key: &str) -> Vec<Map<String, Value>> {
    let mut page: Map<String, Value> = serde_json::from_slice(body).expect("a JSON page");
    let Some(Value::Array(records)) = page.remove(key) else {
        panic!("a `{key}` page");
    };
    records
        .into_iter()
        .map(|r| match r {
            Value::Object(record) => record,
            other => panic!("a record: {other}"),
        })
        .collect()
}

/// A `key` envelope of `records`, with `overrides` (the last for a name wins) written into
/// record `at` in place of its own members.
fn envelope(
    key: &str,
    records: &[Map<String, Value>],
    at: usize,
    overrides: &[(String, Json)],
) -> String {
    let mut out = format!("{{{}:[", quote(key));
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let none: &[(String, Json)] = &[];
        write_record(&mut out, record, if i == at { overrides } else { none });
    }
    out.push_str("]}");
    out
}

fn write_record(out: &mut String, record: &Map<String, Value>, overrides: &[(String, Json)]) {
    let last = |name: &str| overrides.iter().rev().find(|(n, _)| n == name);
    let mut members: Vec<(String, String)> = record
        .iter()
        .map(|(name, value)| match last(name) {
            Some((_, o)) => (name.clone(), o.text()),
            None => (name.clone(), value.to_string()),
        })
        .collect();
    for (name, _) in overrides {
        if !members.iter().any(|(n, _)| n == name)
            && let Some((_, o)) = last(name)
        {
            members.push((name.clone(), o.text()));
        }
    }
    out.push('{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&quote(name));
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
}

// ---- JSON of every kind ----------------------------------------------------------------------

/// A JSON value written out by hand, so it can hold what `serde_json::Value` cannot: numbers
/// beyond every Rust type, lone surrogates, any nesting.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    /// A number as written.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
    /// JSON text put in as it is.
    Raw(String),
}

impl Json {
    fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) | Json::Raw(n) => out.push_str(n),
            Json::Str(s) => out.push_str(&quote(s)),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Obj(members) => {
                out.push('{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote(name));
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn obj(members: &[(&str, Json)]) -> Json {
    Json::Obj(
        members
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect(),
    )
}

fn s(text: &str) -> Json {
    Json::Str(text.to_owned())
}

/// `value` (and `number`) in the shapes a server may send a value in: as text, inside text, as
/// a number, in an array, as or inside a reference, in a role, nested.
fn shapes(value: &str, number: &str) -> Vec<Json> {
    use Json::{Arr, Num};
    vec![
        s(value),
        s(&format!("Ana {value} Diaz")),
        s(&format!(" {value}é ")),
        s(&format!("{value}, {value}")),
        s(&format!("2011-02-03{value}")),
        Num(number.to_owned()),
        Num(format!("{number}.5")),
        Num(format!("-{number}e3")),
        s(number),
        Arr(vec![s(value)]),
        Arr(vec![Num(number.to_owned()), s(value)]),
        obj(&[("sourcedId", s(value))]),
        obj(&[("href", s(value)), ("sourcedId", obj(&[("x", s(value))]))]),
        Arr(vec![obj(&[("sourcedId", Num(number.to_owned()))])]),
        Arr(vec![obj(&[("roleType", s("primary")), ("role", s(value))])]),
        obj(&[("a", Arr(vec![obj(&[("b", s(value))])]))]),
    ]
}

fn planted_shapes() -> &'static [Json] {
    static SHAPES: OnceLock<Vec<Json>> = OnceLock::new();
    SHAPES.get_or_init(|| shapes(PLANTED[0], PLANTED[1]))
}

fn hidden_shapes() -> &'static [Json] {
    static SHAPES: OnceLock<Vec<Json>> = OnceLock::new();
    SHAPES.get_or_init(|| shapes(HIDDEN[0], HIDDEN[1]))
}

/// Values of every JSON type that fit few fields or none: for each field in turn.
fn odd_values() -> Vec<Json> {
    use Json::{Arr, Bool, Null, Num, Raw};
    let deep = |n: usize| {
        Raw(format!(
            "{}{}{}",
            "[".repeat(n),
            quote(PLANTED[0]),
            "]".repeat(n)
        ))
    };
    let mut odd = vec![
        Null,
        Bool(true),
        Bool(false),
        s(""),
        s(" "),
        s("\0"),
        s("abcé"),
        s("ext:é"),
        s("日本語のテキスト"),
        Raw(r#""\ud800""#.into()),
        Raw(r#""\udfff x""#.into()),
        Arr(vec![]),
        Arr(vec![Null]),
        Arr(vec![Arr(vec![])]),
        Arr(vec![Bool(true), Num("1".into())]),
        obj(&[]),
        obj(&[("sourcedId", Null)]),
        obj(&[("sourcedId", obj(&[]))]),
        Arr(vec![obj(&[])]),
        deep(300),
        Raw(format!(
            "{}1{}",
            "{\"sourcedId\":".repeat(300),
            "}".repeat(300)
        )),
    ];
    odd.extend(NUMBERS.iter().map(|n| Num((*n).to_owned())));
    odd.extend(planted_shapes().iter().cloned());
    odd
}

/// Numbers at and beyond the edges of every numeric type, in every form JSON allows.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "0e0",
    "1",
    "2",
    "-1",
    "1.5",
    "1E+2",
    "1e-2",
    "1e400",
    "-1e400",
    "1e-400",
    "5e-324",
    "1.7976931348623157e308",
    "9223372036854775807",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
];

/// Strings servers send, and strings nobody should: empty, blank, NULs, non-ASCII (also where
/// a prefix is cut), vocabulary look-alikes, escapes, separators, dates.
const WORDS: &[&str] = &[
    "",
    " ",
    "  padded  ",
    "\0",
    "a\0b",
    "Ana",
    "O'Brien",
    "María José",
    "日本語",
    "🙂🙂",
    "abcé",
    "abé",
    "ext:",
    "ext:campus",
    "EXT:x",
    "true",
    "FALSE",
    "yes",
    "1",
    "null",
    "NULL",
    "a,b, c",
    ",,",
    "\"quoted\"",
    "back\\slash",
    "tab\tnew\nline\rend",
    "{brace}",
    "<missing>",
    "2026-11-20T08:30:00.000Z",
];

/// Date-times in every ISO 8601 spelling the normalizer reads, and near misses.
const DATE_FORM: &str = "[0-9]{4}-[0-9]{2}-[0-9]{2}\
    ([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,12})?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?";

const STATUSES: &[&str] = &[
    "active",
    "tobedeleted",
    "inactive",
    "Active",
    "TOBEDELETED",
    " active ",
    "archived",
    "",
    "deleted",
];

const SEXES: &[&str] = &[
    "male",
    "Female",
    "F",
    "m",
    "x",
    "O",
    "nonbinary",
    "Non-Binary",
    "unspecified",
    "notSpecified",
    "unknown",
    "Zebra",
    "",
];

const FLAGS: &[&str] = &[
    "true", "false", "TRUE", "False", "yes", "NO", "t", "f", "Y", "n", "1", "0", " true ", "",
    "maybe",
];

const HREF: &str = "https://sis.example/ims/oneroster/v1p1/orgs/x";

const DATES: &[&str] = &[
    "2026-11-20T08:30:00.000Z",
    "2017-09-27 10:57:52",
    "2017-09-27T12:57:52+02:00",
    "2017-09-27T05:57:52-0500",
    "2017-09-27t10:57:52z",
    "2017-09-27",
    "2017-09-27T10:57",
    "9999-12-31T23:59:59.9999999Z",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "0000-01-01",
    "+10000-01-01",
    "2017-13-01",
    "2017-02-30",
    "2017-09-27T25:00:00",
    "2017-09-27T10:57:52+99:99",
    "2017-09-27T10:57:52.123456789012345678Z",
    "27/09/2017",
    "yesterday",
    "2017-09-27é",
    "2017-09-2é",
    "T",
    " ",
];

/// Field names of every collection, and some that are in none.
const KEYS: &[&str] = &[
    "sourcedId",
    "status",
    "dateLastModified",
    "name",
    "type",
    "title",
    "parent",
    "role",
    "roles",
    "orgs",
    "terms",
    "grades",
    "periods",
    "user",
    "class",
    "primary",
    "sex",
    "asian",
    "metadata",
    "href",
    "users",
    "",
];

const RAW_STRINGS: &[&str] = &[
    r#""\ud800""#,
    r#""\udfff x""#,
    r#""\ud83d\ude42""#,
    r#""\u0000""#,
    r#""\u00e9t\u00e9""#,
    r#""a\/b""#,
    r#""\b\f\n\r\t""#,
];

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        2 => select(NUMBERS).prop_map(str::to_owned),
        2 => "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,4})?",
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(WORDS).prop_map(str::to_owned),
        2 => "\\PC{0,16}",
        1 => any::<String>(),
        1 => select(planted_shapes()).prop_map(|j| j.text()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(KEYS).prop_map(str::to_owned),
        1 => "[a-zA-Z]{1,10}",
        1 => "\\PC{0,6}",
    ]
}

fn leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        1 => Just(Json::Null),
        1 => any::<bool>().prop_map(Json::Bool),
        2 => number().prop_map(Json::Num),
        4 => string().prop_map(Json::Str),
        1 => select(RAW_STRINGS).prop_map(|r| Json::Raw(r.to_owned())),
        1 => select(planted_shapes()),
    ]
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Json> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Arr),
            prop::collection::vec((key(), inner), 0..6).prop_map(Json::Obj),
        ]
    })
}

fn vocabulary(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (select(words), 0..3u8).prop_map(|(word, case)| match case {
            0 => word.to_owned(),
            1 => word.to_uppercase(),
            _ => format!(" {} ", word.to_lowercase()),
        }),
        1 => "(ext:|EXT:)\\PC{0,8}",
        2 => string(),
    ]
}

fn reference() -> impl Strategy<Value = Json> {
    let id = prop_oneof![
        3 => "[a-z0-9_-]{1,12}".prop_map(Json::Str),
        1 => number().prop_map(Json::Num),
        1 => leaf(),
    ];
    prop_oneof![
        4 => (id.clone(), any::<bool>()).prop_map(|(id, full)| if full {
            obj(&[("href", s(HREF)), ("sourcedId", id), ("type", s("org"))])
        } else {
            obj(&[("sourcedId", id)])
        }),
        1 => id,
        1 => Just(Json::Null),
    ]
}

/// A value of the kind the field holds, spelled in the ways servers spell it.
fn plausible(shape: Shape) -> BoxedStrategy<Json> {
    match shape {
        Id => prop_oneof![
            3 => "[a-z0-9_-]{1,16}".prop_map(Json::Str),
            1 => number().prop_map(Json::Num),
            1 => string().prop_map(Json::Str),
        ]
        .boxed(),
        Status => prop_oneof![
            5 => select(STATUSES).prop_map(s),
            1 => Just(Json::Null),
        ]
        .boxed(),
        Timestamp | Date => prop_oneof![
            3 => select(DATES).prop_map(s),
            2 => DATE_FORM.prop_map(Json::Str),
            1 => string().prop_map(Json::Str),
        ]
        .boxed(),
        Text => prop_oneof![
            4 => string().prop_map(Json::Str),
            1 => number().prop_map(Json::Num),
        ]
        .boxed(),
        Vocab(words) => vocabulary(words).prop_map(Json::Str).boxed(),
        Sex => prop_oneof![
            2 => select(SEXES).prop_map(s),
            1 => string().prop_map(Json::Str),
        ]
        .boxed(),
        Flag => prop_oneof![
            2 => any::<bool>().prop_map(Json::Bool),
            2 => select(FLAGS).prop_map(s),
            1 => select(&["0", "1", "2", "-1", "1.0"][..]).prop_map(|n| Json::Num(n.to_owned())),
            1 => Just(Json::Null),
        ]
        .boxed(),
        Ref => reference().boxed(),
        Refs => prop_oneof![
            4 => prop::collection::vec(reference(), 0..4).prop_map(Json::Arr),
            1 => Just(Json::Null),
        ]
        .boxed(),
        List => prop_oneof![
            3 => prop::collection::vec(string().prop_map(Json::Str), 0..4).prop_map(Json::Arr),
            1 => prop::collection::vec(number().prop_map(Json::Num), 0..3).prop_map(Json::Arr),
            2 => "[0-9a-z ,]{0,12}".prop_map(Json::Str),
            1 => Just(Json::Null),
        ]
        .boxed(),
        Roles => prop::collection::vec(
            (
                select(&["primary", "secondary", " PRIMARY ", ""][..]),
                vocabulary(USER_ROLES),
                reference(),
                plausible(Date),
            )
                .prop_map(|(role_type, role, org, begin)| {
                    obj(&[
                        ("roleType", s(role_type)),
                        ("role", Json::Str(role)),
                        ("org", org),
                        ("beginDate", begin),
                    ])
                }),
            0..3,
        )
        .prop_map(Json::Arr)
        .boxed(),
        UserIds => prop_oneof![
            4 => prop::collection::vec(
                (select(&["sis", "LDAP", "idp", ""][..]), string())
                    .prop_map(|(id_type, id)| {
                        obj(&[("type", s(id_type)), ("identifier", Json::Str(id))])
                    }),
                0..3,
            )
            .prop_map(Json::Arr),
            1 => Just(Json::Null),
        ]
        .boxed(),
    }
}

/// A record of collection `c`: most fields plausible, some of any JSON type or planted, left-out
/// fields holding hidden values, unknown members, in any order.
fn record(c: &'static Collection) -> impl Strategy<Value = Json> {
    let fields: Vec<_> = c
        .fields
        .iter()
        .map(|&(name, shape)| {
            let value = prop_oneof![
                8 => plausible(shape),
                2 => json(),
                1 => select(planted_shapes()),
            ];
            prop::option::weighted(0.85, value).prop_map(move |v| v.map(|v| (name.to_owned(), v)))
        })
        .collect();
    let left_out = prop::option::of((select(c.left_out), select(hidden_shapes())));
    let unknown = prop::collection::vec((key(), json()), 0..2);
    (fields, left_out, unknown)
        .prop_map(|(fields, left_out, unknown)| {
            let mut members: Vec<(String, Json)> = fields.into_iter().flatten().collect();
            members.extend(left_out.map(|(name, value)| (name.to_owned(), value)));
            members.extend(unknown);
            members
        })
        .prop_shuffle()
        .prop_map(Json::Obj)
}

/// A page body for collection `c`: a bare array or an envelope (with other members, under
/// another collection's key, or holding no array), records mostly of the collection's shape.
fn page(c: &'static Collection) -> impl Strategy<Value = String> {
    let records = prop::collection::vec(prop_oneof![6 => record(c), 1 => json()], 0..6);
    let others = prop::collection::vec((key(), json()), 0..3);
    let key = prop_oneof![
        4 => Just(c.key),
        1 => select(COLLECTIONS.iter().map(|c| c.key).collect::<Vec<_>>()),
    ];
    (records, others, key, 0..5u8, json()).prop_map(move |(records, others, key, form, odd)| {
        let array = Json::Arr(records);
        match form {
            0 => array.text(),
            1 => format!(" \n\t{}\r\n", array.text()),
            2 => {
                let mut members = vec![(key.to_owned(), array)];
                members.extend(others);
                Json::Obj(members).text()
            }
            3 => {
                let mut members = others;
                members.push((key.to_owned(), array));
                Json::Obj(members).text()
            }
            _ => Json::Obj(vec![(key.to_owned(), odd)]).text(),
        }
    })
}

fn any_page() -> impl Strategy<Value = (usize, String)> {
    (0..COLLECTIONS.len()).prop_flat_map(|i| page(&COLLECTIONS[i]).prop_map(move |p| (i, p)))
}

/// An edit of a body's bytes.
#[derive(Debug, Clone)]
enum Edit {
    Cut(Index),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Repeat(Index, usize),
}

/// Byte sequences that break UTF-8 (lone continuation and lead bytes, surrogates, overlong
/// forms, beyond U+10FFFF) or JSON (structure, escapes, numbers), or that sit at its edge.
const BAD_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xc3",
    b"\x80",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
];

const TOKENS: &[&[u8]] = &[
    b"\xef\xbb\xbf",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"null",
    b"1e400",
    b"-",
    b"\\u0000",
    b"\\ud800",
    b"\x00",
    b"[[[[[[[[",
    b"\"sourcedId\":",
    b"\"users\":[",
];

fn edit() -> impl Strategy<Value = Edit> {
    let bytes = prop_oneof![
        2 => select(BAD_UTF8).prop_map(<[u8]>::to_vec),
        2 => select(TOKENS).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        1 => any::<Index>().prop_map(Edit::Cut),
        2 => (any::<Index>(), 1..=255u8).prop_map(|(at, bits)| Edit::Flip(at, bits)),
        3 => (any::<Index>(), bytes).prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        2 => (any::<Index>(), 1..64usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        1 => (any::<Index>(), 1..256usize).prop_map(|(at, n)| Edit::Repeat(at, n)),
    ]
}

fn apply(body: &mut Vec<u8>, edit: &Edit) {
    let len = body.len();
    match edit {
        Edit::Cut(at) => body.truncate(at.index(len + 1)),
        Edit::Insert(at, bytes) => {
            let at = at.index(len + 1);
            body.splice(at..at, bytes.iter().copied());
        }
        _ if len == 0 => {}
        Edit::Flip(at, bits) => body[at.index(len)] ^= *bits,
        Edit::Delete(at, n) => {
            let at = at.index(len);
            body.drain(at..len.min(at + n));
        }
        Edit::Repeat(at, n) => {
            let at = at.index(len);
            let copy = body[at..len.min(at + n)].to_vec();
            body.splice(at..at, copy);
        }
    }
}

/// The body without trailing white space (a cut inside it leaves it incomplete).
fn trimmed(body: &[u8]) -> &[u8] {
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &body[..end]
}

// ---- properties ------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(192))]

    /// Generated pages of every collection, read under every wire type.
    #[test]
    fn generated_pages_are_pages_or_clear_errors((i, body) in any_page()) {
        read_generated(i, body.as_bytes());
    }

    /// Any JSON value as the whole body, as the collection, or as the records.
    #[test]
    fn any_json_body_is_a_page_or_a_clear_error(
        value in json(),
        key in 0..COLLECTIONS.len(),
        form in 0..3u8,
    ) {
        let body = match form {
            0 => value.text(),
            1 => Json::Obj(vec![(COLLECTIONS[key].key.to_owned(), value)]).text(),
            _ => Json::Arr(vec![value.clone(), value]).text(),
        };
        read_all(body.as_bytes());
    }

    /// Real pages with their bytes cut, flipped, inserted (invalid UTF-8 among them), deleted and
    /// repeated.
    #[test]
    fn mutated_real_pages_are_pages_or_clear_errors(
        page in 0..COLLECTIONS.len(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let mut body = sim_pages()[page].1.clone();
        for e in &edits {
            apply(&mut body, e);
        }
        read_all(&body);
    }

    /// A generated page with its bytes edited.
    #[test]
    fn mutated_generated_pages_are_pages_or_clear_errors(
        (_, body) in any_page(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut body = body.into_bytes();
        for e in &edits {
            apply(&mut body, e);
        }
        read_all(&body);
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// A real page that ends early, as a cut connection leaves it, is an error worth a retry,
    /// whichever collection it is read as.
    #[test]
    fn cut_real_pages_are_retryable(page in 0..COLLECTIONS.len(), at in any::<Index>()) {
        let body = trimmed(&sim_pages()[page].1);
        let cut = &body[..at.index(body.len())];
        for c in &COLLECTIONS {
            let e = (c.read)(cut).expect_err("a cut page is no page");
            prop_assert!(e.retryable, "{}: {e}", c.key);
        }
    }

    /// The same for generated pages, cut anywhere (inside a number's sign, point or exponent
    /// too: `1.`, `-`, `1e`).
    #[test]
    fn cut_generated_pages_are_errors((_, body) in any_page(), at in any::<Index>()) {
        let body = trimmed(body.as_bytes());
        prop_assume!(!body.is_empty());
        let cut = &body[..at.index(body.len())];
        for c in &COLLECTIONS {
            let e = (c.read)(cut).expect_err("a cut page is no page");
            prop_assert!(e.retryable, "{}: {e}", c.key);
        }
    }

    /// A real page with invalid UTF-8 put anywhere in it is an error, and not a retryable one.
    #[test]
    fn invalid_utf8_is_never_a_page(
        page in 0..COLLECTIONS.len(),
        at in any::<Index>(),
        bad in select(BAD_UTF8),
    ) {
        let mut body = sim_pages()[page].1.clone();
        apply(&mut body, &Edit::Insert(at, bad.to_vec()));
        prop_assume!(std::str::from_utf8(&body).is_err());
        for c in &COLLECTIONS {
            let e = (c.read)(&body).expect_err("invalid UTF-8 is no page");
            prop_assert!(!e.retryable, "{}: {e}", c.key);
        }
    }

    /// Values planted in a real record's fields, in every shape, and hidden values in the fields
    /// the daemon leaves out: the page still reads, only that record may be skipped, by its id
    /// and naming a planted field, and no planted value reaches a message.
    #[test]
    fn planted_values_never_reach_a_message(
        page in 0..COLLECTIONS.len(),
        at in any::<Index>(),
        plants in prop::collection::vec((any::<Index>(), any::<Index>(), any::<bool>()), 1..5),
    ) {
        let (c, body) = &sim_pages()[page];
        let records = records_of(body, c.key);
        let at = at.index(records.len());
        let overrides: Vec<(String, Json)> = plants
            .iter()
            .map(|(field, shape, hide)| {
                let (name, shapes) = if *hide {
                    (c.left_out[field.index(c.left_out.len())], hidden_shapes())
                } else {
                    (c.fields[field.index(c.fields.len())].0, planted_shapes())
                };
                (name.to_owned(), shapes[shape.index(shapes.len())].clone())
            })
            .collect();
        let body = envelope(c.key, &records, at, &overrides);
        let read = (c.read)(body.as_bytes()).expect("a page");
        keeps_nothing_hidden(&read);
        prop_assert_eq!(read.records + read.unreadable.len(), records.len());
        let errors = read.findings.iter().filter(|f| f.is_error()).count();
        let skipped = read.unreadable.len() + errors;
        prop_assert!(skipped <= 1, "{:?} {:?}", read.unreadable, read.findings);
        if let Some(f) = read.unreadable.first() {
            let planted_id = overrides.iter().any(|(name, _)| name == "sourcedId");
            if !planted_id {
                let id = records[at]["sourcedId"].as_str();
                prop_assert_eq!(Some(f.sourced_id.as_str()), id);
            }
            let names = |(name, _): &(String, Json)| {
                f.message.starts_with(&format!("field `{name}"))
            };
            prop_assert!(overrides.iter().any(names), "{f:?} names a planted field");
        }
    }
}

/// Bodies built to cost the most memory per byte, at a scale where the fixed allowance does not
/// count: empty records, unreadable records, records whose every field is unreadable, numbers
/// read as text (`read` holds each to `bound`).
#[test]
fn memory_grows_with_records_and_text_only() {
    const N: usize = 10_000;
    let many = |record: &str| format!("[{}{record}]", format!("{record},").repeat(N));
    for body in [
        many("[]"),
        many("{}"),
        many("1"),
        many("{\"sourcedId\":{}}"),
        many("{\"sourcedId\":5e-324}"),
        many(r#"{"sourcedId":"a","status":"active","role":"student","user":"u","class":"c"}"#),
        format!(
            r#"[{{"sourcedId":"a","status":"active","grades":[{}5e-324]}}]"#,
            "5e-324,".repeat(N)
        ),
    ] {
        read_all(body.as_bytes());
    }
}

/// The simulator's pages, as ClassLink sends them, read whole: every record readable and none
/// skipped, memory about the page's size, and nothing of the personal data in the fields the
/// daemon leaves out (birth dates, cities of birth, passwords, phone numbers) kept.
#[test]
fn real_pages_are_read_whole() {
    for (c, body) in sim_pages() {
        let read = (c.read)(body).expect("a real page reads");
        assert!(read.records > 0, "{}: records", c.key);
        assert!(
            read.unreadable.is_empty(),
            "{}: {:?}",
            c.key,
            read.unreadable
        );
        assert!(
            read.peak <= realistic_bound(body.len()),
            "{}: a {} byte page held {} bytes",
            c.key,
            body.len(),
            read.peak
        );
        assert!(
            read.findings.iter().all(|f| !f.is_error()),
            "{}: {:?}",
            c.key,
            read.findings
        );
        for record in records_of(body, c.key) {
            for name in PERSONAL {
                let mut left_out = Vec::new();
                collect_strings(record.get(*name), &mut left_out);
                for value in left_out.into_iter().filter(|v| v.len() >= 6) {
                    assert!(
                        !read.kept.contains(value.as_str()),
                        "{}: `{name}` was kept",
                        c.key
                    );
                }
            }
        }
    }
}

/// The personal data among the fields the daemon leaves out.
const PERSONAL: &[&str] = &[
    "birthDate",
    "cityOfBirth",
    "countryOfBirthCode",
    "stateOfBirthAbbreviation",
    "publicSchoolResidenceStatus",
    "password",
    "phone",
    "sms",
];

fn collect_strings(value: Option<&Value>, out: &mut Vec<String>) {
    match value {
        Some(Value::String(s)) => out.push(s.clone()),
        Some(Value::Array(items)) => items.iter().for_each(|v| collect_strings(Some(v), out)),
        Some(Value::Object(members)) => {
            members.values().for_each(|v| collect_strings(Some(v), out))
        }
        _ => {}
    }
}

/// Every field of every record type, in turn, holding a value of every JSON type (and every
/// left-out field holding hidden values): the record is read, or skipped by its id with a
/// finding that names that field; a left-out field never makes a record unreadable.
#[test]
fn every_odd_type_in_every_field_is_read_or_skipped_by_id() {
    let odd = odd_values();
    for (c, body) in sim_pages() {
        let records = records_of(body, c.key);
        let record = &records[..1];
        let id = record[0]["sourcedId"].as_str().expect("a real id");
        for &(name, _) in c.fields {
            for value in &odd {
                let body = envelope(c.key, record, 0, &[(name.to_owned(), value.clone())]);
                let read = (c.read)(body.as_bytes()).expect("one odd field leaves a page");
                assert_eq!(read.records + read.unreadable.len(), 1);
                if let Some(f) = read.unreadable.first() {
                    assert!(
                        f.message.starts_with(&format!("field `{name}")),
                        "{}.{name} = {}: {f:?}",
                        c.key,
                        value.text()
                    );
                    if name != "sourcedId" {
                        assert_eq!(f.sourced_id, id);
                    }
                }
            }
        }
        for name in c.left_out {
            for value in odd.iter().chain(hidden_shapes()) {
                let body = envelope(c.key, record, 0, &[((*name).to_owned(), value.clone())]);
                let read = (c.read)(body.as_bytes()).expect("a left-out field leaves a page");
                keeps_nothing_hidden(&read);
                assert_eq!(read.records, 1, "{name}");
                assert!(read.unreadable.is_empty(), "{name}: {:?}", read.unreadable);
            }
        }
    }
}

/// Nesting far deeper than any recursion limit, in every position (the body, the collection, a
/// record, every field, a reference's members; closed and cut), read on a small stack: a parser
/// that recursed per level would overflow it.
#[test]
fn deep_nesting_is_read_without_recursing() {
    const DEPTH: usize = 50_000;
    let run = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| {
            let arrays = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
            let objects = format!("{}1{}", "{\"a\":".repeat(DEPTH), "}".repeat(DEPTH));
            let refs = format!("{}1{}", "{\"sourcedId\":".repeat(DEPTH), "}".repeat(DEPTH));
            for deep in [&arrays, &objects, &refs] {
                read_all(deep.as_bytes());
                read_all(format!("[{deep},{{\"sourcedId\":\"a\"}}]").as_bytes());
                for c in &COLLECTIONS {
                    let _ = (c.read)(format!("{{\"{}\":{deep}}}", c.key).as_bytes());
                    let _ = (c.read)(format!("{{\"x\":{deep},\"{}\":[]}}", c.key).as_bytes());
                    let names = c
                        .fields
                        .iter()
                        .map(|f| f.0)
                        .chain(c.left_out.iter().copied());
                    for name in names.chain(["unknown"]) {
                        let body = format!(
                            "[{{\"sourcedId\":\"a\",\"status\":\"active\",\"{name}\":{deep}}}]"
                        );
                        let read = (c.read)(body.as_bytes()).expect("a page");
                        assert_eq!(read.records + read.unreadable.len(), 1);
                    }
                }
            }
            for cut in [
                "[".repeat(DEPTH),
                format!("{{\"users\":[{}", "{\"a\":[".repeat(DEPTH)),
            ] {
                for c in &COLLECTIONS {
                    let e = (c.read)(cut.as_bytes()).expect_err("a cut page");
                    assert!(e.retryable, "{}: {e}", c.key);
                }
            }
        })
        .expect("a thread");
    run.join().expect("deep nesting read");
}

/// Strings of megabytes in every field, numbers of a megabyte of digits, a megabyte-long
/// member name: read, normalized and encoded within twice the body's size.
#[test]
fn huge_strings_and_numbers_stay_in_bounds() {
    const MIB: usize = 1 << 20;
    // JSON string content: escapes, NULs, quotes, backslashes, non-ASCII, separators.
    let chunk = r#"Ana María \"O'Brien\" \u00e9\u0000\n\\ 日本, \t"#;
    let huge = format!("\"{}\"", chunk.repeat(MIB / chunk.len()));
    for c in &COLLECTIONS {
        let members: Vec<String> = c
            .fields
            .iter()
            .map(|&(name, shape)| {
                let value = match shape {
                    Status => "\"active\"".to_owned(),
                    Ref => format!("{{\"sourcedId\":{huge}}}"),
                    Refs => format!("[{{\"sourcedId\":{huge}}},{{\"sourcedId\":{huge}}}]"),
                    List => format!("[{huge},{huge}]"),
                    UserIds => format!("[{{\"type\":\"sis\",\"identifier\":{huge}}}]"),
                    Roles => format!("[{{\"roleType\":\"primary\",\"role\":{huge}}}]"),
                    Flag => "\"true\"".to_owned(),
                    _ => huge.clone(),
                };
                format!("\"{name}\":{value}")
            })
            .collect();
        let body = format!("[{{{}}}]", members.join(","));
        let read = (c.read)(body.as_bytes()).expect("a page");
        assert_eq!(read.records, 1, "{}", c.key);
        assert!(
            read.peak <= 2 * body.len() + MIB,
            "{}: a {} byte page held {} bytes",
            c.key,
            body.len(),
            read.peak
        );
    }
    let digits = "7".repeat(MIB);
    let zeros = "0".repeat(MIB);
    for number in [
        digits.clone(),
        format!("-{digits}"),
        format!("0.{zeros}1"),
        format!("1e{digits}"),
        format!("1e-{digits}"),
        format!("{digits}e-{}", MIB + 20),
    ] {
        for c in &COLLECTIONS {
            let body = format!("[{{\"sourcedId\":{number},\"status\":\"active\"}}]");
            let read = (c.read)(body.as_bytes()).expect("a page");
            assert_eq!(read.records + read.unreadable.len(), 1);
            assert!(read.peak <= 2 * body.len() + MIB, "{}", c.key);
        }
    }
    let long_name = format!("[{{\"{}\":1,\"sourcedId\":\"a\"}}]", "k".repeat(4 * MIB));
    for c in &COLLECTIONS {
        let read = (c.read)(long_name.as_bytes()).expect("a page");
        assert_eq!(read.records, 1);
        assert!(read.peak <= 2 * long_name.len() + MIB, "{}", c.key);
    }
}
