//! Integration tests: the real server, real repositories, real peers.

mod auth;
mod cli;
mod coordination;
mod crash;
mod differential;
mod etcdctl;
mod existing;
mod git_sync;
mod gitopper;
mod group;
mod hosts;
mod keys;
mod kubernetes;
mod lease;
mod lock;
mod maintenance;
mod namespace;
mod oracle;
mod production;
mod remote;
mod shared_repo;
mod snapshot;
mod support;
mod walkthrough;
mod watch;
