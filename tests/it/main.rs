//! Integration tests against the real RabbitMQ and S3 (Garage), each test
//! on its own randomly prefixed queues and S3 keys. Run through
//! `scripts/test.sh`, which starts the services and exports their settings.

mod architecture;
mod callbacks;
mod chaos;
mod console;
mod console_ops;
mod dead_letters;
mod delivery;
mod didit;
mod guarantees;
mod harness;
mod intellicheck;
mod ops;
mod pay_once;
mod results;
mod telemetry;
mod tls;
mod traffic;
