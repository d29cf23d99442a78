from .main import program

program.run()
