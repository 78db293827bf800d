//! Optional TOML configuration files. Every binary takes `--config FILE`; a value given by flag
//! or environment wins over the file, and the file wins over the built-in default.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Load a TOML file into `T` (all of whose fields should be optional), or `T::default()`.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))
}
