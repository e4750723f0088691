//! The app's container images on the host: their housekeeping after swaps ([`prune`]).

pub mod prune;
