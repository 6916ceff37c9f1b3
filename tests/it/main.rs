//! All integration tests, in one binary so they link once.

mod client;
mod config;
mod daemon;
mod migrations;
mod safety;
mod support;
mod sync;
