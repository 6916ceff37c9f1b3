//! All integration tests, in one binary so they link once.

mod audit;
mod client;
mod config;
mod daemon;
mod delta;
mod docs;
mod fuzz;
mod health;
mod journal;
mod migrations;
mod network;
mod outage;
mod quirks;
mod safety;
mod scope;
mod support;
mod sync;
mod unchanged;
mod versions;
