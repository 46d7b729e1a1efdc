//! Integration tests: the real server, real repositories, real peers.

mod differential;
mod support;
mod walkthrough;
