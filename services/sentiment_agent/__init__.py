"""Sentiment agent: scores news headlines per symbol and publishes the running score.

- `headlines`: the replay file (format below);
- `lexicon`: the offline model, a weighted word list with negation (pure);
- `aggregate`: per-symbol score with exponential time decay (pure);
- `service`: replay loop and bus wiring (`python -m services.sentiment_agent`).
"""
