//! All integration tests, in one binary so they link once.

mod migrations;
mod support;
mod sync;
