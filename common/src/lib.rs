//! Trishanku's shared library. Binaries under `src/bin` are thin: they parse
//! flags and call one function here.

pub mod etcd;
pub mod keys;
pub mod meta;
pub mod proto;
pub mod repo;
pub mod server;
pub mod signal;
pub mod store;
pub mod sync;
pub mod telemetry;
