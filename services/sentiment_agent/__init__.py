"""Sentiment agent: scores news headlines per symbol and publishes the running score.

- `headlines`: the replay file (format below);
- `feeds`: RSS / Atom feeds by URL (httpx + feedparser), entries mapped to symbols by keywords;
- `lexicon`: the offline model, a weighted word list with negation (pure);
- `scoring`: the lexicon scorer, or an LLM scorer through the [llm] provider with the lexicon as fallback;
- `aggregate`: per-symbol score with exponential time decay (pure);
- `service`: sources, bus wiring, its KV bucket `sentiment` (key: the symbol) (`python -m services.sentiment_agent`).
"""
