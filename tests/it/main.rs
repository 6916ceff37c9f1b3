//! All integration tests, in one binary so they link once.

mod audit;
mod client;
mod config;
mod docs;
mod migrations;
mod safety;
mod support;
mod sync;
