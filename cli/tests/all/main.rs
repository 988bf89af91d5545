//! End-to-end tests of the `roam` binary: real processes, real guests.

mod run;
