//! Table names and record ids as the client accepts them, checked before they reach the local database or
//! the wire, and the 16-character ids given to records inserted without one. Randomness comes in as an
//! argument, so nothing here is hidden state.

use rand::Rng;
use rand::distr::Alphanumeric;
use syncline_core::{is_safe_id, is_valid_name};

use crate::ClientError;

/// A table name the server can know: checked once, then passed around.
pub(crate) fn check_table(name: &str) -> Result<(), ClientError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ClientError::InvalidTable(name.to_string()))
    }
}

/// A record id: 1-64 characters from `[A-Za-z0-9_.-]`, so it needs no escaping in JSON.
pub(crate) fn check_id(id: &str) -> Result<(), ClientError> {
    if is_safe_id(id) {
        Ok(())
    } else {
        Err(ClientError::InvalidId(id.to_string()))
    }
}

/// A fresh 16-character alphanumeric id, the shape WatermelonDB makes.
pub(crate) fn new_id(rng: &mut impl Rng) -> String {
    rng.sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_safe_and_distinct() {
        let mut rng = rand::rng();
        let a = new_id(&mut rng);
        let b = new_id(&mut rng);
        assert!(check_id(&a).is_ok() && a.len() == 16 && a != b);
        assert!(check_id("a/b").is_err() && check_table("Friends").is_err());
    }
}
