//! Integration tests of the Accounts API simulator. Each test starts its own simulator
//! on port 0 and talks to it over HTTP on loopback.

#[path = "simulator/support.rs"]
mod support;

#[path = "simulator/generator.rs"]
mod generator;

#[path = "simulator/contract.rs"]
mod contract;

#[path = "simulator/rules.rs"]
mod rules;

#[path = "simulator/faults.rs"]
mod faults;

#[path = "simulator/queries.rs"]
mod queries;

#[path = "simulator/control.rs"]
mod control;
