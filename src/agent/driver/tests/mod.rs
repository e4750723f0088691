//! The driver's tests over in-memory seams.

use super::*;

mod reload;
mod status;
mod swaps;
