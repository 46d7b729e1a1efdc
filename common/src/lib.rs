//! Trishanku's shared library. Binaries under `src/bin` are thin: they parse
//! flags and call one function here.

pub mod auth;
pub mod error;
#[cfg(feature = "grpc")]
pub mod etcd;
pub mod gitopper;
pub mod http;
pub mod keys;
pub mod lease;
pub mod memory;
pub mod merge;
pub mod meta;
pub mod prepare;
pub mod proto;
pub mod publish;
pub mod pull;
pub mod remote;
pub mod repo;
#[cfg(feature = "grpc")]
pub mod server;
pub mod signal;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
