//! `ten token-gen`.

use std::process::ExitCode;

use anyhow::{anyhow, Result};

use crate::client::control::Client;

pub fn generate(c: &Client) -> Result<ExitCode> {
    let v = c.call("POST", "/api/tokens", None)?;
    let token = v["token"]
        .as_str()
        .ok_or_else(|| anyhow!("ten serve returned no token"))?;
    println!("{token}");
    eprintln!("Store it now: it is shown once (only its Argon2 hash is kept). Use it as `Authorization: Bearer <token>`.");
    Ok(ExitCode::SUCCESS)
}
