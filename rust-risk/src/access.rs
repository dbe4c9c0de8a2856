//! Who may change what through the risk API. The caller is the NATS user: the last
//! token of `risk.api.killswitch.<user>` / `risk.api.limits.<user>`, a subject each user
//! may publish only with its own name (proto/nats/moonbus.conf). A payload's `actor` is
//! a claim, kept only as a note beside the caller.

use moonbus_common::KillSwitchAction;

/// May engage the kill switch (and flatten): the humans, and the risk agent on a breach.
const ENGAGE: [&str; 3] = ["operator", "gateway", "risk-agent"];
/// May release the kill switch, change limits and release the loss latch: humans only.
const RELEASE: [&str; 2] = ["operator", "gateway"];

/// Ok, or the reason for a `forbidden` reply.
pub fn kill_switch(caller: &str, action: KillSwitchAction, flatten: bool) -> Result<(), String> {
    let allowed = match action {
        KillSwitchAction::Status if !flatten => true,
        KillSwitchAction::Engage | KillSwitchAction::Status => ENGAGE.contains(&caller),
        KillSwitchAction::Release => RELEASE.contains(&caller),
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "{caller:?} may not {} the kill switch (engage: {}; release: {})",
            match action {
                KillSwitchAction::Release => "release",
                _ => "engage",
            },
            ENGAGE.join(", "),
            RELEASE.join(", ")
        ))
    }
}

/// Ok, or the reason for a `forbidden` reply: reading limits is open, changing them is not.
pub fn limits(caller: &str, changes: bool) -> Result<(), String> {
    if !changes || RELEASE.contains(&caller) {
        Ok(())
    } else {
        Err(format!(
            "{caller:?} may not change limits or release the loss latch (only {})",
            RELEASE.join(", ")
        ))
    }
}

/// The actor recorded for a change: the caller, with the name it gave when that differs
/// (`operator (alice)`).
pub fn actor(caller: &str, claimed: &str) -> String {
    if claimed.is_empty() || claimed == caller || claimed == "operator" {
        caller.to_string()
    } else {
        format!(
            "{caller} ({})",
            claimed.chars().take(64).collect::<String>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_risk_agent_may_engage_but_never_release_or_change_limits() {
        assert!(kill_switch("risk-agent", KillSwitchAction::Engage, true).is_ok());
        assert!(kill_switch("risk-agent", KillSwitchAction::Status, false).is_ok());
        assert!(kill_switch("risk-agent", KillSwitchAction::Release, false).is_err());
        assert!(limits("risk-agent", true).is_err());
        assert!(limits("risk-agent", false).is_ok());
        for human in ["operator", "gateway"] {
            assert!(kill_switch(human, KillSwitchAction::Release, false).is_ok());
            assert!(limits(human, true).is_ok());
        }
        // Anyone else (a subject token no permission grants) gets nothing but status.
        assert!(kill_switch("trading-agent", KillSwitchAction::Engage, false).is_err());
        assert!(kill_switch("x", KillSwitchAction::Status, true).is_err());
    }

    #[test]
    fn the_actor_is_the_caller_whatever_the_payload_claims() {
        assert_eq!(actor("risk-agent", "operator"), "risk-agent");
        assert_eq!(actor("operator", "alice"), "operator (alice)");
        assert_eq!(actor("gateway", ""), "gateway");
    }
}
