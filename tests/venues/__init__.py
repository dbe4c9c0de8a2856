"""Local stand-ins of the live venues (Binance, Hyperliquid, Jupiter) for the adapter tests."""
