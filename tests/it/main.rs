//! All integration tests, in one binary so they link once.

mod audit;
mod client;
mod config;
mod migrations;
mod network;
mod safety;
mod support;
mod sync;
