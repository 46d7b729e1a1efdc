//! Integration tests: the real server, real repositories, real peers.

mod cli;
mod crash;
mod differential;
mod etcdctl;
mod existing;
mod git_sync;
mod group;
mod keys;
mod kubernetes;
mod lease;
mod maintenance;
mod support;
mod walkthrough;
mod watch;
