//! The acceptance tests live beside this file, in `tests/`; the helpers they share are in
//! `crates/rafty-testkit`. This library is empty on purpose: Cargo needs a target for the root package.
