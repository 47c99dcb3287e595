//! Who set a runtime rule and when: `shaper limit ls` shows it, and the state file keeps it
//! across restarts. The identity is what the kernel said about the control connection that asked
//! (`SO_PEERCRED`, fixed at connect(2)), never what a client claims.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The process that set a rule through the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `null` when the kernel gave no credentials for the connection.
    pub uid: Option<u32>,
    /// The uid's login name, when the password database has one.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub pid: Option<i32>,
    /// The process's command (`/proc/PID/comm`), read when the request arrived.
    #[serde(default)]
    pub command: Option<String>,
    /// When the rule was set: RFC 3339, UTC, to the second.
    pub at: String,
}

impl Actor {
    /// An actor with `uid`, `user`, `pid` and `command`, acting now.
    pub fn now(
        uid: Option<u32>,
        user: Option<String>,
        pid: Option<i32>,
        command: Option<String>,
    ) -> Self {
        Self {
            uid,
            user,
            pid,
            command,
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }

    /// The user for a table cell: the name, else `uid N`, else `unknown`.
    pub fn who(&self) -> String {
        match (&self.user, self.uid) {
            (Some(user), _) => user.clone(),
            (None, Some(uid)) => format!("uid {uid}"),
            (None, None) => "unknown".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_serializes_with_every_field_and_reads_back() {
        let actor = Actor {
            uid: Some(1000),
            user: Some("alice".into()),
            pid: Some(4242),
            command: Some("shaper".into()),
            at: "2026-12-06T06:40:00Z".into(),
        };
        let json = serde_json::to_string(&actor).unwrap();
        assert_eq!(
            json,
            r#"{"uid":1000,"user":"alice","pid":4242,"command":"shaper","at":"2026-12-06T06:40:00Z"}"#
        );
        assert_eq!(serde_json::from_str::<Actor>(&json).unwrap(), actor);
        assert_eq!(actor.who(), "alice");
        let nameless = Actor {
            user: None,
            ..actor.clone()
        };
        assert_eq!(nameless.who(), "uid 1000");
        let unknown = Actor {
            uid: None,
            ..nameless
        };
        assert_eq!(unknown.who(), "unknown");
    }

    #[test]
    fn now_is_an_rfc3339_utc_second() {
        let at = Actor::now(Some(0), None, None, None).at;
        // 2026-12-06T06:40:00Z
        assert_eq!(at.len(), 20, "{at}");
        assert!(at.ends_with('Z') && at.as_bytes()[10] == b'T', "{at}");
        assert!(humantime::parse_rfc3339(&at).is_ok(), "{at}");
    }
}
