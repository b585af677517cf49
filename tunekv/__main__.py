from tunekv.cli import run

run()
