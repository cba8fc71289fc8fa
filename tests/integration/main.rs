//! End-to-end tests of the pipeline on the real RabbitMQ and PostgreSQL, with the
//! simulator as the platform. Each test has its own database and queues, so tests run
//! in parallel.

mod bad_input;
mod binary;
mod calls;
mod cases;
mod client;
mod collector;
mod failures;
mod guarantees;
mod operators;
mod proxy;
mod support;
mod telemetry;
mod telemetry_faults;
