//! Trishanku's shared library. Binaries under `src/bin` are thin: they parse
//! flags and call one function here.

pub mod error;
#[cfg(feature = "grpc")]
pub mod etcd;
pub mod keys;
pub mod lease;
pub mod merge;
pub mod meta;
pub mod proto;
pub mod remote;
pub mod repo;
#[cfg(feature = "grpc")]
pub mod server;
pub mod signal;
pub mod store;
pub mod telemetry;
