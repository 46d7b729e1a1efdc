//! Integration tests: the real server, real repositories, real peers.

mod support;
mod walkthrough;
