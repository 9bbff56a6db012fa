//! The SSH executor: one persistent, multiplexed connection per host (russh); runs `Cmd`s and writes files.
