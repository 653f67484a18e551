//! The CLI: `ten`'s command line, its commands, and the client of `ten serve`'s control
//! socket. Nothing here runs the proxy or the supervisor; `ten serve` hands over to `server`.

pub mod cli;
pub mod cmd;
pub mod control;
