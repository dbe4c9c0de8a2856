"""The moonbus Python client against a running system (`make run`, then
`.venv/bin/python examples/client_example.py`). Connects as `operator` with
.moon/nats.env (or NATS_URL / NATS_USER / NATS_PASSWORD / NATS_CA)."""

from services.client import ApiError, BlockingMoonbusClient

with BlockingMoonbusClient() as moon:
    print("market-data", moon.version("market-data").version)
    tick = moon.get_realtime_price("BTC-USD")
    print(f"BTC-USD {tick.price} (bid {tick.bid}, ask {tick.ask})")
    print({symbol: str(t.price) for symbol, t in moon.get_bulk_prices(["BTC-USD", "ETH-USD"]).prices.items()})

    moon.start_price_monitor("BTC-USD", threshold_pct=1.5, window_s=60)
    print("monitor active:", moon.is_monitor_active("BTC-USD"))
    moon.stop_price_monitor("BTC-USD")

    account = moon.positions().account
    print(f"equity {account.equity}, day PnL {account.day_pnl}, state {account.state.value}")
    print("kill switch engaged:", moon.kill_switch_status().engaged)
    for trail in moon.orders(limit=5):
        print(trail.client_order_id, trail.status)

    for t in moon.ticks("BTC-USD", limit=3):  # typed subscriptions: ticks, bars, alerts, reports
        print("tick", t.price)

    try:
        moon.get_realtime_price("NOPE-USD")
    except ApiError as e:
        print("error reply:", e.code)
