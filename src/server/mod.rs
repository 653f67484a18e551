//! `ten serve`: the proxy, the supervisor and the fleet wired together, the table publisher,
//! the audit log, the management API, the proxy listeners, reload, upgrade and systemd notification.

pub mod acme;
pub mod admin;
pub mod api;
pub mod audit;
pub mod compose;
pub mod data_dir;
pub mod listeners;
pub mod notify;
pub mod reload;
pub mod serve;
pub mod upgrade;
pub mod workers;
