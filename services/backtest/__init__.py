"""Backtesting: the live strategies, sizing and risk rules over historical bars on an
event-time clock (engine.py), reports (report.py), data files (data.py), distributed
sweeps over NATS (worker.py, sweep.py) and rehearsals through the running services
(rehearsal.py). README "Backtesting" is the user's guide."""
