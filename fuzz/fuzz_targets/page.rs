//! Any bytes as a OneRoster page body, read as a page of every collection; every record read is
//! normalized and, but for demographics, put in its stored form. A page is records or an error
//! that says what is wrong; a finding has its code, severity and collection. The property tests
//! (`tests/it/fuzz.rs`) check the same boundary with bounds and planted values.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oneroster_sync::domain::{Code, Severity};
use oneroster_sync::normalize::{self, Normalized};
use oneroster_sync::oneroster::{WireRecord, read_page, wire};
use oneroster_sync::stored::{self, Stored};

fuzz_target!(|body: &[u8]| {
    page::<wire::Org, _>(body, normalize::org, line);
    page::<wire::AcademicSession, _>(body, normalize::academic_session, line);
    page::<wire::Course, _>(body, normalize::course, line);
    page::<wire::Class, _>(body, normalize::class, line);
    page::<wire::User, _>(body, normalize::user, line);
    page::<wire::Enrollment, _>(body, normalize::enrollment, line);
    page::<wire::Demographics, _>(body, normalize::demographics, |_| ());
});

fn page<W: WireRecord, R>(body: &[u8], normalize: fn(W) -> Normalized<R>, store: fn(&R)) {
    let entity = W::ENDPOINT.name;
    let (records, unreadable) = match read_page::<W>(body) {
        Ok(page) => page,
        Err(e) => {
            assert!(!e.detail.trim().is_empty(), "{entity}: an error without detail");
            return;
        }
    };
    for f in &unreadable {
        assert_eq!((f.code, f.entity), (Code::RecordUnreadable, entity), "{f:?}");
    }
    for record in records {
        match normalize(record) {
            Ok((record, warnings)) => {
                for w in &warnings {
                    assert_eq!((w.severity, w.entity), (Severity::Warning, entity), "{w:?}");
                }
                store(&record);
            }
            Err(f) => assert_eq!((f.severity, f.entity), (Severity::Error, entity), "{f:?}"),
        }
    }
}

/// The record's COPY line: one tab before each column, whatever the values hold.
fn line<R: Stored>(record: &R) {
    let mut buf = Vec::new();
    stored::encode(record, &mut buf);
    let tabs = buf.iter().filter(|b| **b == b'\t').count();
    assert_eq!(tabs, stored::columns(R::ENTITY).len(), "a tab in a value is escaped");
}
