from edgefleet.cli import app

app()
