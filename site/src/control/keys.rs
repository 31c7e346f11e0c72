//! The recovery keys an instance is rebuilt with: supplied with the operation, or
//! loaded by the standby's [`KeyLoader`] (needed then and only then, DESIGN.md I6).

use super::{Control, ControlError};
use ferry_wire::{RecoveryKey, RecoveryKeys, ServerId};

/// Loads a server's recovery keys when an instance of it is rebuilt (the data and seal
/// keys are needed then and only then, DESIGN.md I6); the error says why it could not.
pub type KeyLoader = Box<dyn Fn(&ServerId) -> Result<RecoveryKey, String> + Send + Sync>;

impl Control {
    /// Sets how the keys are loaded for rebuilding instances (once, at start).
    pub fn set_key_loader(&self, loader: KeyLoader) {
        let _ = self.keys.set(loader);
    }

    /// The recovery key of `server`: the one supplied with the operation (held only for
    /// it, zeroized when dropped), else the standby's `recovery_key_file`.
    pub fn recovery_key(
        &self,
        server: &ServerId,
        supplied: Option<&RecoveryKey>,
    ) -> Result<RecoveryKey, ControlError> {
        if let Some(key) = supplied {
            if &key.server != server {
                return Err(ControlError::Keys(format!(
                    "the recovery key supplied is server {}'s, not {server}'s",
                    key.server
                )));
            }
            return Ok(key.clone());
        }
        let loader = self.keys.get().ok_or_else(|| {
            ControlError::Keys(format!(
                "this standby holds no recovery key: supply server {server}'s with the \
                 operation (--recovery-key), or set recovery_key_file (then this standby \
                 can read the replicas that key opens)"
            ))
        })?;
        loader(server).map_err(ControlError::Keys)
    }

    /// The recovery keys of `server` (see [`Control::recovery_key`]).
    pub fn load_keys(
        &self,
        server: &ServerId,
        supplied: Option<&RecoveryKey>,
    ) -> Result<RecoveryKeys, ControlError> {
        self.recovery_key(server, supplied).map(|k| k.keys())
    }
}
