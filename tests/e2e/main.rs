//! End-to-end tests: the real `ten` binary, real `ten-testapp` children, real HTTP on 127.0.0.1.

mod browser;
mod config;
mod control;
mod dashboard;
mod deploy;
mod edge;
mod fleet;
mod hostile;
mod isolation;
mod lifecycle;
mod logs;
mod metrics;
mod packaging;
mod plugins;
mod reload;
mod routing;
mod supervision;
mod tls;
mod trust;
mod upgrade;
mod util;
