//! Order rate limits: at most N approved orders in any sliding window, per agent and
//! for all agents together, with a separate budget for orders that reduce a position,
//! so a mass close is never throttled by the normal budget. Over the limit the check
//! is refused (not queued): the agent decides whether to retry.

use std::collections::{HashMap, VecDeque};

use crate::rules::Refusal;

/// Budgets per window; 0 = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub window_ns: u64,
    pub per_agent: usize,
    pub global: usize,
    pub reduce_only: usize,
}

/// The approvals of one window, oldest first: (time, client_order_id).
#[derive(Debug, Default)]
struct Window(VecDeque<(u64, String)>);

impl Window {
    fn expire(&mut self, now_ns: u64, window_ns: u64) {
        while self
            .0
            .front()
            .is_some_and(|(t, _)| now_ns.saturating_sub(*t) >= window_ns)
        {
            self.0.pop_front();
        }
    }

    fn contains(&self, client_order_id: &str) -> bool {
        self.0.iter().any(|(_, id)| id == client_order_id)
    }

    fn push(&mut self, now_ns: u64, client_order_id: &str) {
        self.0.push_back((now_ns, client_order_id.to_string()));
    }
}

#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    agents: HashMap<String, Window>,
    global: Window,
    reduce_only: Window,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            agents: HashMap::new(),
            global: Window::default(),
            reduce_only: Window::default(),
        }
    }

    /// Count an order the other rules approved, or refuse it. `reducing` orders use
    /// only the reduce-only budget. A re-check of an order already counted in the
    /// window (execution retrying) passes without counting twice.
    pub fn admit(
        &mut self,
        agent: &str,
        client_order_id: &str,
        reducing: bool,
        now_ns: u64,
    ) -> Result<(), Refusal> {
        let RateLimits {
            window_ns,
            per_agent,
            global,
            reduce_only,
        } = self.limits;
        let window_ms = window_ns / 1_000_000;
        if reducing {
            if reduce_only == 0 {
                return Ok(());
            }
            self.reduce_only.expire(now_ns, window_ns);
            if self.reduce_only.contains(client_order_id) {
                return Ok(());
            }
            if self.reduce_only.0.len() >= reduce_only {
                return Err(Refusal {
                    code: "rate_limit_reduce_only",
                    reason: format!(
                        "{reduce_only} position-reducing orders in the last {window_ms} ms already \
                         (rate_limit_reduce_only); retry shortly"
                    ),
                });
            }
            self.reduce_only.push(now_ns, client_order_id);
            return Ok(());
        }
        self.global.expire(now_ns, window_ns);
        let own = self.agents.entry(agent.to_string()).or_default();
        own.expire(now_ns, window_ns);
        if own.contains(client_order_id) || self.global.contains(client_order_id) {
            return Ok(());
        }
        if per_agent > 0 && own.0.len() >= per_agent {
            return Err(Refusal {
                code: "rate_limit_agent",
                reason: format!(
                    "agent {agent} sent {per_agent} orders in the last {window_ms} ms already \
                     (rate_limit_agent); retry shortly"
                ),
            });
        }
        if global > 0 && self.global.0.len() >= global {
            return Err(Refusal {
                code: "rate_limit_global",
                reason: format!(
                    "{global} orders from all agents in the last {window_ms} ms already \
                     (rate_limit_global); retry shortly"
                ),
            });
        }
        if per_agent > 0 {
            own.push(now_ns, client_order_id);
        }
        if global > 0 {
            self.global.push(now_ns, client_order_id);
        }
        // Agents that sent nothing within the window need no entry.
        self.agents.retain(|_, w| {
            w.expire(now_ns, window_ns);
            !w.0.is_empty()
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limiter(per_agent: usize, global: usize, reduce_only: usize) -> RateLimiter {
        RateLimiter::new(RateLimits {
            window_ns: 1000 * MS,
            per_agent,
            global,
            reduce_only,
        })
    }

    fn code(result: Result<(), Refusal>) -> &'static str {
        result.map_or_else(|r| r.code, |()| "ok")
    }

    #[test]
    fn per_agent_budget_slides_with_the_window() {
        let mut r = limiter(2, 0, 0);
        assert_eq!(code(r.admit("a", "1", false, 0)), "ok");
        assert_eq!(code(r.admit("a", "2", false, 400 * MS)), "ok");
        assert_eq!(code(r.admit("a", "3", false, 999 * MS)), "rate_limit_agent");
        // Another agent has its own budget.
        assert_eq!(code(r.admit("b", "4", false, 999 * MS)), "ok");
        // The first order leaves the window at t = 1000 ms: one slot frees up.
        assert_eq!(code(r.admit("a", "5", false, 1000 * MS)), "ok");
        assert_eq!(
            code(r.admit("a", "6", false, 1001 * MS)),
            "rate_limit_agent"
        );
    }

    #[test]
    fn global_budget_counts_every_agent() {
        let mut r = limiter(10, 3, 0);
        for (i, agent) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(code(r.admit(agent, &i.to_string(), false, 0)), "ok");
        }
        let refused = r.admit("d", "x", false, 10 * MS).unwrap_err();
        assert_eq!(refused.code, "rate_limit_global");
        assert!(refused.reason.contains("3 orders"), "{}", refused.reason);
    }

    #[test]
    fn a_refused_order_uses_no_budget() {
        let mut r = limiter(1, 0, 0);
        assert_eq!(code(r.admit("a", "1", false, 0)), "ok");
        for i in 0..5 {
            assert_eq!(
                code(r.admit("a", &format!("r{i}"), false, 10 * MS)),
                "rate_limit_agent"
            );
        }
        assert_eq!(code(r.admit("a", "2", false, 1000 * MS)), "ok");
    }

    #[test]
    fn reducing_orders_have_their_own_budget() {
        let mut r = limiter(1, 1, 2);
        assert_eq!(code(r.admit("a", "1", false, 0)), "ok");
        assert_eq!(code(r.admit("a", "2", false, 0)), "rate_limit_agent");
        // The normal budget is spent, a mass close still passes, up to its own budget.
        assert_eq!(code(r.admit("a", "c1", true, 0)), "ok");
        assert_eq!(code(r.admit("b", "c2", true, 0)), "ok");
        assert_eq!(code(r.admit("b", "c3", true, 0)), "rate_limit_reduce_only");
        // ... and closing orders do not eat the normal budget.
        assert_eq!(code(r.admit("b", "3", false, 0)), "rate_limit_global");
    }

    #[test]
    fn a_recheck_of_the_same_order_is_not_counted_twice() {
        let mut r = limiter(1, 1, 1);
        assert_eq!(code(r.admit("a", "1", false, 0)), "ok");
        assert_eq!(code(r.admit("a", "1", false, 5 * MS)), "ok");
        assert_eq!(code(r.admit("a", "c", true, 0)), "ok");
        assert_eq!(code(r.admit("a", "c", true, 5 * MS)), "ok");
    }

    #[test]
    fn zero_means_no_limit() {
        let mut r = limiter(0, 0, 0);
        for i in 0..10_000 {
            assert_eq!(code(r.admit("a", &i.to_string(), i % 2 == 0, 0)), "ok");
        }
        assert!(r.agents.is_empty() && r.global.0.is_empty() && r.reduce_only.0.is_empty());
    }
}
