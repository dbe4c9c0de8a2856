"""`python -m services.cli ...` = `moon ...`."""

from .main import app

app(prog_name="moon")
