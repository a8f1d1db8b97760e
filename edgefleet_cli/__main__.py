from edgefleet_cli.main import app

app()
