//! Integration tests: the real server, real repositories, real peers.

mod differential;
mod existing;
mod keys;
mod support;
mod walkthrough;
