//! Resilience tests of the real `erp-sync` binary.
//!
//! Each test starts private instances that it may kill, stop or stall without
//! disturbing anything else on the machine: a RabbitMQ node and a PostgreSQL cluster
//! on ports of their own, a loopback TCP proxy it controls, and the platform simulator
//! in process. The worker runs as a child process configured only through `ERP_SYNC_*`
//! variables, exactly as an operator would run it. While events flow, the test injects
//! one fault, then checks that every event settled exactly once: one success in the
//! audit trail per command, no second successful call except a retry with the same
//! `Idempotency-Key`, nothing lost, nothing left unsettled.
//!
//! The tests need root (the private servers run as the `rabbitmq` and `postgres`
//! users), the Debian packages `rabbitmq-server`, `postgresql` and `faketime`, and
//! loopback networking only. They never touch the shared services on ports 5432 and
//! 5672.

mod broker;
mod clocks;
mod crash;
mod database;
mod instances;
mod limits;
mod shutdown;
mod support;
