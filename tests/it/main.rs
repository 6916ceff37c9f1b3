//! All integration tests, in one binary so they link once.

mod client;
mod config;
mod migrations;
mod network;
mod support;
mod sync;
