from gallama.cli import app

app()
