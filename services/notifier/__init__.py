"""Notifier: fills, rejections, risk breaches, kill-switch changes, price alerts and venue
mismatches, sent to webhooks (generic JSON, Discord, Slack, Telegram).

- `config`: the [notifier] section (channels, filters, rate limits; secrets by env var name);
- `events`: bus messages -> Notices, state-change tracking (pure);
- `formats`: a Notice as each webhook wants it (pure);
- `channel`: one channel's filter, token bucket, bounded queue, retries (httpx);
- `service`: the bus wiring (`python -m services.notifier`), as NATS user `notifier`.
"""
