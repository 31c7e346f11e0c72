//! Registering: `reverse register` tells the pair's primary site (the peer) of the
//! server — the pair, mirrored, and the server in it — and `register` makes the
//! failed-back server `initialized` here again, the peer told to forget its reverse
//! replica. What the peer already has is accepted only when it reads back as what this
//! site would have made (same pair, server in the same pair), and only a refusal whose
//! code says it exists is taken as "already there": nothing is judged by an error's
//! wording.

use crate::api::{AddServer, ErrorCode};
use crate::catalog::{CatalogError, Pair, Reverse};
use crate::control::{Control, ControlError};
use crate::lifecycle::{State, Step};
use ferry_wire::{ServerId, error_chain};
use serde_json::Value;

impl Control {
    /// Makes `pair` exist at `site`: a repeated registration finds it there already,
    /// which is fine only if what is there is this pair (read back, never judged by the
    /// refusal's wording).
    fn ensure_peer_pair(&self, site: &str, pair: &Pair) -> Result<(), ControlError> {
        let body = serde_json::to_value(pair).expect("a pair serializes");
        match self.peer(site, "POST", "/v1/pairs", &body) {
            Err(ControlError::Peer { source, .. })
                if source.code == Some(ErrorCode::PairExists) =>
            {
                let theirs: Vec<Pair> =
                    serde_json::from_value(self.peer(site, "GET", "/v1/pairs", &Value::Null)?)
                        .map_err(|e| {
                            ControlError::Reverse(format!(
                                "site {site}: its pairs do not read: {e}"
                            ))
                        })?;
                match theirs.iter().find(|p| p.name == pair.name) {
                    Some(p) if p == pair => Ok(()),
                    other => Err(ControlError::Reverse(format!(
                        "site {site} has a pair named {:?} that is not this pair mirrored \
                         (it has {other:?}, this site expects {pair:?})",
                        pair.name
                    ))),
                }
            }
            other => other.map(drop),
        }
    }

    /// Makes `server` a server of `pair` at `site`: one already there is fine only in
    /// the same pair.
    fn ensure_peer_server(
        &self,
        site: &str,
        pair: &str,
        server: &ServerId,
    ) -> Result<(), ControlError> {
        let add = serde_json::to_value(AddServer {
            pair: pair.to_owned(),
            server: server.to_string(),
            storage_class: "standard".to_owned(),
        })
        .expect("a request serializes");
        match self.peer(site, "POST", "/v1/servers", &add) {
            Err(ControlError::Peer { source, .. })
                if source.code == Some(ErrorCode::ServerExists) =>
            {
                let theirs =
                    self.peer(site, "GET", &format!("/v1/servers/{server}"), &Value::Null)?;
                if theirs["pair"] == pair {
                    Ok(())
                } else {
                    Err(ControlError::Reverse(format!(
                        "site {site} protects server {server} in pair {} already, not in pair \
                         {pair}: remove it there first",
                        theirs["pair"]
                    )))
                }
            }
            other => other.map(drop),
        }
    }

    /// Registers the server at the pair's primary site for reverse replication.
    pub fn reverse_register(&self, id: &str) -> Result<State, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        server.check(Step::ReverseRegister)?;
        let pair = self
            .catalog()
            .pairs()
            .iter()
            .find(|p| p.name == server.pair)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownPair(server.pair.clone()))?;
        let site = pair.primary.clone();
        if self.tools()?.peers.data_address(&site).is_none() {
            return Err(ControlError::Reverse(format!(
                "site {site} (the primary of pair {}) is not in this standby's [sites]: add its \
                 data and control addresses and token file",
                pair.name
            )));
        }
        let mirrored = Pair {
            name: pair.name.clone(),
            kind: pair.kind,
            primary: pair.secondary.clone(),
            secondary: pair.primary.clone(),
        };
        self.ensure_peer_pair(&site, &mirrored)?;
        self.ensure_peer_server(&site, &pair.name, &server.id)?;
        let reverse = Reverse {
            site,
            original_machine: false,
            agent_pid: None,
            config: None,
            state_dir: None,
            pin_dir: None,
            final_point: None,
            restored: None,
        };
        Ok(self.change(|c| c.step_and(id, Step::ReverseRegister, |s| s.reverse = Some(reverse)))?)
    }

    /// Registers the failed-back server forward again: `initialized`, its replica here
    /// kept, so its agent catches up by digest; the peer forgets the reverse replica.
    pub fn register(&self, id: &str) -> Result<State, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        server.check(Step::Register)?;
        if let Some(r) = &server.reverse
            && let Err(e) = self.peer(
                &r.site,
                "DELETE",
                &format!("/v1/servers/{id}"),
                &Value::Null,
            )
        {
            tracing::warn!(
                server = id,
                "the peer kept its reverse replica: {}",
                error_chain(&e)
            );
        }
        Ok(self.change(|c| c.step_and(id, Step::Register, |s| s.reverse = None))?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Peers, ReverseTools};
    use super::*;
    use crate::api::CallError;
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// A peer site that answers every `POST` with one refusal and every `GET` with one
    /// body, and records the calls.
    struct Answering {
        refusal: CallError,
        get: Value,
        calls: Mutex<Vec<String>>,
    }

    impl Peers for Answering {
        fn data_address(&self, _: &str) -> Option<String> {
            Some("127.0.0.1:1".into())
        }
        fn call(&self, _: &str, method: &str, path: &str, _: &Value) -> Result<Value, CallError> {
            self.calls.lock().unwrap().push(format!("{method} {path}"));
            match method {
                "GET" => Ok(self.get.clone()),
                _ => Err(self.refusal.clone()),
            }
        }
    }

    fn control_with(peer: Answering) -> (tempfile::TempDir, Control) {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::open(dir.path(), std::collections::HashMap::new()).unwrap();
        control.set_reverse_tools(ReverseTools {
            ferry: PathBuf::from("/nonexistent/ferry"),
            standby_key: ferry_wire::MasterKey::from_bytes([3; 32]).standby_key(),
            pin_root: dir.path().join("pins"),
            peers: Box::new(peer),
            link_tls: None,
        });
        (dir, control)
    }

    fn exists(code: ErrorCode, message: &str) -> CallError {
        CallError {
            code: Some(code),
            message: message.into(),
        }
    }

    #[test]
    fn a_server_the_peer_protects_in_another_pair_is_not_taken_as_registered() {
        let server = ServerId::new("web-1").unwrap();
        // The refusal's wording says "already": only the code and the read-back decide.
        let (_dir, control) = control_with(Answering {
            refusal: exists(
                ErrorCode::ServerExists,
                "server web-1 is already protected (by pair \"other\")",
            ),
            get: serde_json::json!({ "id": "web-1", "pair": "other" }),
            calls: Mutex::default(),
        });
        let refused = control
            .ensure_peer_server("zone-a", "p1", &server)
            .expect_err("another pair's server is not this registration");
        let text = ferry_wire::error_chain(&refused);
        assert!(
            text.contains("in pair \"other\" already, not in pair p1"),
            "{text}"
        );

        let (_dir, control) = control_with(Answering {
            refusal: exists(ErrorCode::ServerExists, "server web-1 is already protected"),
            get: serde_json::json!({ "id": "web-1", "pair": "p1" }),
            calls: Mutex::default(),
        });
        control
            .ensure_peer_server("zone-a", "p1", &server)
            .expect("the same pair's server is a repeated registration");
    }

    #[test]
    fn only_an_exists_code_is_tolerated_and_a_pair_must_read_back_the_same() {
        let pair = Pair {
            name: "p1".into(),
            kind: crate::catalog::PairKind::ZoneToZone,
            primary: "zone-a".into(),
            secondary: "zone-b".into(),
        };
        // A refusal that merely says "already" is an error.
        let (_dir, control) = control_with(Answering {
            refusal: CallError {
                code: Some(ErrorCode::NotAllowed),
                message: "already busy".into(),
            },
            get: Value::Null,
            calls: Mutex::default(),
        });
        assert!(control.ensure_peer_pair("zone-a", &pair).is_err());
        // A pair of that name, defined otherwise, is an error; the same pair is fine.
        let mut other = serde_json::to_value(&pair).unwrap();
        other["primary"] = "zone-c".into();
        for (theirs, ok) in [(other, false), (serde_json::to_value(&pair).unwrap(), true)] {
            let (_dir, control) = control_with(Answering {
                refusal: exists(ErrorCode::PairExists, "a pair named \"p1\" already exists"),
                get: Value::Array(vec![theirs]),
                calls: Mutex::default(),
            });
            assert_eq!(control.ensure_peer_pair("zone-a", &pair).is_ok(), ok);
        }
    }
}
