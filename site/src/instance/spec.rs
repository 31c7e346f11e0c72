//! What the operator asks for ([`Spec`]) and the checks made before anything is made:
//! the size is bounded (1–64 CPUs, 128–262144 MiB), the script launcher has a script
//! and every script path is absolute, the network and address are a bare name and an
//! IP (they end up on qemu's command line), ports are forwarded only from qemu's
//! restricted user network (each once, at most 16), the script is one [`crate::scripts`]
//! admits, the server has registered its disks and the point is retained (seq > 0).
//! Nothing here writes.

use super::{InstanceError, Instances};
use ferry_standby::points::{self, PointSelector};
use ferry_standby::server::ServerState;
use ferry_wire::{Seq, ServerId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Most guest ports one instance forwards.
const MAX_FORWARDS: usize = 16;

/// How the instance is run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Launcher {
    Script,
    Qemu,
}

/// What the operator chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// A point id, or "latest" (the newest state the standby holds); a string in JSON.
    pub point: PointSelector,
    pub launcher: Launcher,
    /// The post-launch script (required for the script launcher).
    pub script: Option<PathBuf>,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Network to attach the instance to (qemu: "user", or a bridge name).
    pub network: Option<String>,
    /// Address for the instance (given to the script and to the VM through fw_cfg
    /// `opt/ferry/ip`).
    pub ip: Option<String>,
    /// Guest TCP ports the standby reaches on its loopback (network "user" only, which
    /// reaches nothing else): the post-launch script gets each as
    /// `FERRY_FORWARD_<port>=127.0.0.1:<host port>`, e.g. for a health check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<u16>,
}

impl Instances {
    /// The post-launch script of `spec` that would run (its canonical path), if it has
    /// one and [`crate::scripts`] admits it.
    pub(super) fn admit_script(&self, spec: &Spec) -> Result<Option<PathBuf>, InstanceError> {
        spec.script
            .as_deref()
            .map(|s| self.scripts().admit(s))
            .transpose()
            .map_err(InstanceError::from)
    }

    /// Checks what can be checked before anything is made, anywhere: the script's
    /// place is checked by the site that runs it ([`crate::scripts`]). Returns the point
    /// asked for.
    pub fn check(spec: &Spec) -> Result<PointSelector, InstanceError> {
        if !(1..=64).contains(&spec.cpus) || !(128..=262_144).contains(&spec.memory_mib) {
            return Err(InstanceError::Size(spec.cpus, spec.memory_mib));
        }
        match (&spec.launcher, &spec.script) {
            (Launcher::Script, None) => return Err(InstanceError::NoScript),
            (_, Some(script)) if !script.is_absolute() => {
                return Err(crate::scripts::ScriptError::NotAbsolute(script.clone()).into());
            }
            _ => {}
        }
        // They end up on qemu's command line: nothing but a name and an address.
        if let Some(net) = &spec.network
            && (net.is_empty()
                || net.len() > 15
                || !net
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(InstanceError::BadNetwork(net.clone()));
        }
        if let Some(ip) = &spec.ip {
            let (addr, prefix) = ip.split_once('/').unwrap_or((ip, "0"));
            if addr.parse::<std::net::IpAddr>().is_err() || prefix.parse::<u8>().is_err() {
                return Err(InstanceError::BadIp(ip.clone()));
            }
        }
        if !spec.forward.is_empty() {
            let mut ports = spec.forward.clone();
            ports.sort_unstable();
            ports.dedup();
            let why = if spec.launcher != Launcher::Qemu || spec.network.as_deref() != Some("user")
            {
                Some("ports are forwarded only with the qemu launcher on network \"user\"")
            } else if ports.len() != spec.forward.len() || ports.len() > MAX_FORWARDS {
                Some("at most 16 ports, each once")
            } else if ports.first() == Some(&0) {
                Some("port 0 is not a port")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(InstanceError::BadForward(spec.forward.clone(), why));
            }
        }
        Ok(spec.point)
    }

    /// Checks a launch of `server` at `spec.point` without making anything: the spec,
    /// the server's registration, the point; returns the point's seq.
    pub fn resolve(&self, server: &ServerId, spec: &Spec) -> Result<Seq, InstanceError> {
        self.open_point(server, spec).map(|(_, seq)| seq)
    }

    /// The server's store (read-only) and the seq of the point.
    pub(super) fn open_point(
        &self,
        server: &ServerId,
        spec: &Spec,
    ) -> Result<(ServerState, Seq), InstanceError> {
        let selector = Self::check(spec)?;
        self.admit_script(spec)?;
        let state = self
            .data
            .read_server(server)
            .map_err(|e| InstanceError::Store(server.clone(), e))?;
        if state.registration().is_none() {
            return Err(InstanceError::NotRegistered(server.clone()));
        }
        match points::resolve(&state.points(), state.log.last_seq(), selector) {
            Some(seq) if seq.get() > 0 => Ok((state, seq)),
            _ => Err(InstanceError::NoPoint(server.clone(), spec.point)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_spec as spec;
    use super::*;
    use ferry_wire::PointId;

    #[test]
    fn a_bad_spec_is_refused_before_anything_is_made() {
        let bad = [
            Spec { cpus: 0, ..spec() },
            Spec {
                memory_mib: 64,
                ..spec()
            },
            Spec {
                launcher: Launcher::Script,
                ..spec()
            },
            Spec {
                script: Some("check.sh".into()),
                ..spec()
            },
        ];
        for s in bad {
            let err = Instances::check(&s).unwrap_err().to_string();
            assert!(!err.is_empty());
        }
        assert_eq!(Instances::check(&spec()).unwrap(), PointSelector::Latest);
    }

    #[test]
    fn ports_are_forwarded_only_from_a_restricted_user_network_each_once() {
        let user = |forward: Vec<u16>| Spec {
            network: Some("user".into()),
            forward,
            ..spec()
        };
        assert!(Instances::check(&user(vec![8080, 22])).is_ok());
        for (bad, why) in [
            (
                Spec {
                    forward: vec![8080],
                    ..spec()
                },
                "network \"user\"",
            ),
            (user(vec![8080, 8080]), "each once"),
            (user((1..=17).collect()), "at most 16"),
            (user(vec![0]), "port 0"),
        ] {
            let err = Instances::check(&bad).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        // A spec without forwards keeps the JSON it had.
        let json = serde_json::to_value(spec()).expect("a spec serializes");
        assert!(json.get("forward").is_none(), "{json}");
    }

    #[test]
    fn a_spec_names_its_point_as_text_and_refuses_what_is_not_a_point() {
        let json = serde_json::to_value(spec()).expect("a spec serializes");
        assert_eq!(json["point"], "latest");
        let at = |point: &str| {
            let mut json = json.clone();
            json["point"] = point.into();
            serde_json::from_value::<Spec>(json)
        };
        let earlier = at("1795533480000").expect("a point id decodes");
        assert_eq!(
            earlier.point,
            PointSelector::Id(PointId::new(1795533480000))
        );
        assert_eq!(
            serde_json::to_value(&earlier).expect("serializes")["point"],
            "1795533480000"
        );
        let err = at("yesterday").expect_err("not a point");
        assert!(err.to_string().contains("is not a point id"), "{err}");
    }
}
